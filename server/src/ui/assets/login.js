// minicloud console: the sign-in form. Sends the token as JSON (the server sets it as an
// HttpOnly cookie) and goes to the console; a refusal is shown as the server words it.

const form = document.getElementById("login");
const problem = document.getElementById("problem");

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  problem.textContent = "";
  const token = document.getElementById("token").value.trim();
  try {
    const response = await fetch("/ui/login", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ token }),
    });
    if (response.ok) {
      location.assign("/ui");
      return;
    }
    const answer = await response.json().catch(() => ({}));
    problem.textContent = answer.message || `sign-in failed (HTTP ${response.status})`;
  } catch (error) {
    problem.textContent = `cannot reach the server: ${error}`;
  }
});
