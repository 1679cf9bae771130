//! Stacks and the templates marketplace with the real `cloud` binary, real Docker, HAProxy and
//! PostgreSQL: a template installed in dependency order that serves its URL output, a
//! re-apply that updates in place and keeps generated values, bad stacks refused with their
//! locations, a failing child that fails the stack until it is fixed, a secret parameter that is
//! on no byte of the store, and deletion.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::common::cluster::{condition, fetch, Harness};
use crate::common::docker::docker;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

const PREFIX: &str = "stack";

fn cloud_ok(harness: &Harness, arguments: &[&str]) -> String {
    let mut all = arguments.to_vec();
    all.extend(["-n", harness.namespace.as_str()]);
    let (ok, stdout, stderr) = harness.cloud(&all);
    assert!(ok, "cloud {all:?} failed: {stderr}");
    stdout
}

fn phase(object: &Value) -> &str {
    object["status"]["phase"].as_str().unwrap_or_default()
}

fn current(object: &Value) -> bool {
    object["status"]["observedGeneration"] == object["metadata"]["generation"]
}

async fn wait_phase(harness: &Harness, name: &str, wanted: &str) -> Value {
    harness.wait_for("stacks", name, wanted, |o| current(o) && phase(o) == wanted).await
}

fn time(value: &Value) -> DateTime<Utc> {
    value.as_str().and_then(|t| DateTime::parse_from_rfc3339(t).ok()).map(|t| t.with_timezone(&Utc)).expect("a time")
}

#[tokio::test]
async fn web_app_postgres_installs_in_order_serves_updates_in_place_and_deletes() {
    let harness = Harness::start(PREFIX).await;
    let said = cloud_ok(&harness, &["templates", "install", "web-app-postgres", "shop", "--set", "replicas=2"]);
    assert!(said.contains("stack/shop created from template web-app-postgres 1.0.0"), "{said}");
    let stack = harness
        .wait_for("stacks", "shop", "Ready", |o| {
            current(o) && phase(o) == "Ready" && o["status"]["outputs"]["url"].is_string()
        })
        .await;

    // The database came first: the application was created only once it was Ready.
    let database = harness.get("manageddatabases", "shop-db").await.expect("database");
    let group = harness.get("scalinggroups", "shop-app").await.expect("group");
    let database_ready = database["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .map(|c| time(&c["lastTransitionTime"]))
        .expect("Ready");
    assert!(time(&group["metadata"]["creationTimestamp"]) >= database_ready, "the app waited for its database");
    let events = harness.events("Stack", "shop").await;
    let created =
        |what: &str| events.iter().position(|e| e == &format!("ResourceCreated: created {what}")).unwrap_or(usize::MAX);
    assert!(created("manageddatabase/shop-db") < created("scalinggroup/shop-app"), "{events:?}");

    // The URL output answers through the load balancer; the members got the database's URL.
    let url = stack["status"]["outputs"]["url"].as_str().expect("url").to_owned();
    let http = reqwest::Client::new();
    fetch(&http, &format!("{url}/cgi-bin/whoami")).await.expect("the url answers");
    let database_url = cloud_ok(&harness, &["secret", "reveal", "shop-db-credentials", "url"]).trim().to_owned();
    let member = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=minicloud.dev/namespace={}", harness.namespace),
        "--filter",
        "label=minicloud.dev/kind=Instance",
    ]);
    let member = member.lines().next().expect("a member").to_owned();
    let env = docker(&["inspect", "--format", "{{json .Config.Env}}", &member]);
    assert!(env.contains(&format!("DATABASE_URL={database_url}")), "{env}");
    assert_eq!(stack["status"]["outputs"]["session_secret"], "<redacted>");
    let password = cloud_ok(&harness, &["secret", "reveal", "shop-db-credentials", "password"]);
    let session = cloud_ok(&harness, &["secret", "reveal", "shop-params", "session_secret"]);
    assert_eq!(session.trim().len(), 48);
    let (ok, described, _) = harness.cloud(&["describe", "stack", "shop", "-n", &harness.namespace]);
    assert!(ok && described.contains("outputs:") && described.contains(&url), "{described}");

    // A changed parameter updates the children in place; generated values stay.
    let group_uid = group["metadata"]["uid"].clone();
    cloud_ok(&harness, &["templates", "install", "web-app-postgres", "shop", "--set", "replicas=3"]);
    harness
        .wait_for("scalinggroups", "shop-app", "3 members", |o| {
            o["status"]["readyReplicas"] == 3 && o["spec"]["desiredReplicas"] == 3
        })
        .await;
    wait_phase(&harness, "shop", "Ready").await;
    assert_eq!(
        harness.get("scalinggroups", "shop-app").await.expect("group")["metadata"]["uid"],
        group_uid,
        "updated, not replaced"
    );
    assert_eq!(cloud_ok(&harness, &["secret", "reveal", "shop-db-credentials", "password"]), password);
    assert_eq!(cloud_ok(&harness, &["secret", "reveal", "shop-params", "session_secret"]), session);

    // Deleting the stack deletes everything it made (the database after its final snapshot).
    cloud_ok(&harness, &["delete", "stack", "shop", "--wait", "--timeout", "180s"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !harness.containers("Instance", false).is_empty()
        || !harness.containers("ManagedDatabase", false).is_empty()
        || !harness.containers("LoadBalancer", false).is_empty()
    {
        assert!(Instant::now() < deadline, "containers left after the stack was deleted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let backups: PathBuf = harness.data_dir.path().join("backups").join(&harness.namespace);
    let finals = std::fs::read_dir(backups)
        .map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".json")).count())
        .unwrap_or(0);
    assert_eq!(finals, 1, "the database's Snapshot policy took a final backup");
    harness.finish().await;
}

fn write(directory: &std::path::Path, name: &str, text: &str) -> String {
    let path = directory.join(name);
    std::fs::write(&path, text).expect("manifest");
    path.display().to_string()
}

#[tokio::test]
async fn bad_stacks_are_refused_where_they_are_wrong_and_nothing_is_created() {
    let harness = Harness::start(PREFIX).await;
    let directory = tempfile::tempdir().expect("dir");
    let cycle = write(
        directory.path(),
        "cycle.yaml",
        "apiVersion: minicloud.dev/v1\nkind: Stack\nmetadata:\n  name: loop\nspec:\n  resources:\n    - apiVersion: minicloud.dev/v1\n      kind: Instance\n      metadata:\n        name: a\n      spec:\n        image: \"minicloud/web:local\"\n        args: [\"${resources.b.status.address}\"]\n    - apiVersion: minicloud.dev/v1\n      kind: Instance\n      metadata:\n        name: b\n      spec:\n        image: \"minicloud/web:local\"\n      dependsOn: [a]\n",
    );
    let (ok, _, stderr) = harness.cloud(&["apply", "-f", &cycle, "-n", &harness.namespace]);
    assert!(
        !ok && stderr.contains(&format!(
            "{cycle}:7:5: spec.resources: the resources depend on each other in a cycle: a → b → a"
        )),
        "{stderr}"
    );

    let unknown = write(
        directory.path(),
        "unknown.yaml",
        "apiVersion: minicloud.dev/v1\nkind: Stack\nmetadata:\n  name: lost\nspec:\n  parameters:\n    - name: replicas\n      type: Integer\n      default: 1\n  values:\n    replicas: three\n  resources:\n    - apiVersion: minicloud.dev/v1\n      kind: Instance\n      metadata:\n        name: a\n      spec:\n        image: \"${resources.nope.status.image}\"\n  outputs:\n    - name: x\n      value: \"${params.missing}\"\n",
    );
    let (ok, _, stderr) = harness.cloud(&["apply", "-f", &unknown, "-n", &harness.namespace]);
    assert!(!ok, "{stderr}");
    for expected in [
        format!("{unknown}:11:15: spec.values.replicas: parameter \"replicas\" expects a Integer"),
        format!("{unknown}:18:16: spec.resources[0].spec.image: ${{resources.nope.status.image}}: \"nope\" names no resource of this stack"),
        format!("{unknown}:21:14: spec.outputs[0].value: ${{params.missing}} names no declared parameter"),
    ] {
        assert!(stderr.contains(&expected), "missing {expected:?} in:\n{stderr}");
    }

    let (ok, _, stderr) = harness.cloud(&[
        "templates",
        "install",
        "static-site",
        "site",
        "--set",
        "nope=1",
        "--set",
        "replicas=x",
        "-n",
        &harness.namespace,
    ]);
    assert!(
        !ok && stderr.contains("has no parameter \"nope\"") && stderr.contains("\"replicas\" expects a Integer"),
        "{stderr}"
    );
    let (ok, _, stderr) = harness.cloud(&["templates", "install", "no-such", "site", "-n", &harness.namespace]);
    assert!(!ok && stderr.contains("no template \"no-such\""), "{stderr}");
    assert!(
        harness.list("stacks").await.is_empty() && harness.list("instances").await.is_empty(),
        "nothing was created"
    );
    harness.finish().await;
}

fn stack_with_image(harness: &Harness, image: &str) -> Value {
    json!({
        "apiVersion": "minicloud.dev/v1", "kind": "Stack",
        "metadata": {"name": "demo", "namespace": harness.namespace},
        "spec": {
            "parameters": [
                {"name": "image", "type": "String", "default": image},
                {"name": "token", "type": "String", "secret": true}
            ],
            "values": {"token": "Known-Token-Value-5e1f0c77"},
            "resources": [{
                "apiVersion": "minicloud.dev/v1", "kind": "Instance",
                "metadata": {"name": "${stack.name}-web"},
                "spec": {
                    "image": "${params.image}",
                    "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "${stack.name}-params", "key": "token"}}}]
                }
            }],
            "outputs": [{"name": "token", "value": "${params.token}"}, {"name": "address", "value": "${resources.demo-web.status.address}"}]
        }
    })
}

#[tokio::test]
async fn a_failing_child_fails_the_stack_until_the_manifest_is_fixed_and_secret_values_stay_sealed() {
    let harness = Harness::start(PREFIX).await;
    harness.apply(vec![stack_with_image(&harness, "minicloud/missing:none")]).await;
    let failed = wait_phase(&harness, "demo", "Failed").await;
    assert_eq!(condition(&failed, "Ready"), Some(("False", "ResourceFailed")));
    let message = failed["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["message"].as_str())
        .unwrap_or_default()
        .to_owned();
    assert!(message.contains("instance demo-web: ImagePullFailed"), "{message}");

    // A resource whose name another object already has is a failure that says so.
    harness.apply(vec![harness.instance("taken", json!({}), json!({}))]).await;
    let mut clash = stack_with_image(&harness, "minicloud/missing:none");
    clash["metadata"]["name"] = json!("clash");
    clash["spec"]["resources"][0]["metadata"]["name"] = json!("taken");
    clash["spec"]["outputs"] = json!([]);
    harness.apply(vec![clash]).await;
    let clashing = wait_phase(&harness, "clash", "Failed").await;
    let resources = clashing["status"]["resources"].to_string();
    assert!(resources.contains("instance/taken") && resources.contains("is not part of this stack"), "{resources}");

    // Fixed and applied again: it goes on from there.
    harness.apply(vec![stack_with_image(&harness, "minicloud/web:local")]).await;
    let ready = wait_phase(&harness, "demo", "Ready").await;
    assert_eq!(ready["status"]["outputs"]["token"], "<redacted>");
    assert!(ready["status"]["outputs"]["address"].as_str().is_some_and(|a| a.contains('.')), "{}", ready["status"]);
    assert_eq!(ready["spec"]["values"]["token"], "<redacted>", "the stack's secret value is redacted in answers");
    let container = harness.instance_container("demo-web").await;
    let env = docker(&["inspect", "--format", "{{json .Config.Env}}", &container]);
    assert!(env.contains("TOKEN=Known-Token-Value-5e1f0c77"), "{env}");

    // A resource added to the stack is created; one dropped from it is deleted.
    let mut with_extra = stack_with_image(&harness, "minicloud/web:local");
    let extra = json!({"apiVersion": "minicloud.dev/v1", "kind": "Instance", "metadata": {"name": "${stack.name}-extra"}, "spec": {"image": "minicloud/web:local"}});
    with_extra["spec"]["resources"].as_array_mut().expect("resources").push(extra);
    harness.apply(vec![with_extra]).await;
    harness
        .wait_for("instances", "demo-extra", "the added resource", |o| {
            condition(o, "Ready").map(|c| c.0) == Some("True")
        })
        .await;
    wait_phase(&harness, "demo", "Ready").await;
    harness.apply(vec![stack_with_image(&harness, "minicloud/web:local")]).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while harness.get("instances", "demo-extra").await.is_some() {
        assert!(Instant::now() < deadline, "the dropped resource was not deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let events = harness.events("Stack", "demo").await;
    assert!(events.iter().any(|e| e.starts_with("ResourceRemoved: removed instance/demo-extra")), "{events:?}");

    // The value is on no byte of the store (the stack's values and its Secret are sealed).
    let database = harness.server().database.as_ref().expect("database").url.clone();
    let directory = PathBuf::from(database.trim_start_matches("sqlite://")).parent().expect("dir").to_path_buf();
    for entry in std::fs::read_dir(&directory).expect("store directory").flatten() {
        let bytes = std::fs::read(entry.path()).unwrap_or_default();
        let found = bytes.windows(26).any(|w| w == b"Known-Token-Value-5e1f0c77");
        assert!(!found, "{} holds the secret value", entry.path().display());
    }
    harness.finish().await;
}

#[test]
fn every_shipped_template_vets() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_cloud"))
        .args(["templates", "vet", "templates/"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cloud templates vet");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(stdout.lines().filter(|l| l.ends_with(": ok")).count(), 6, "{stdout}");
}

#[test]
fn extra_template_directories_add_and_replace_bundles() {
    let directory = tempfile::tempdir().expect("dir");
    let bundle = directory.path().join("hello-site");
    std::fs::create_dir(&bundle).expect("bundle dir");
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/static-site");
    let template = std::fs::read_to_string(shipped.join("template.yaml")).expect("template");
    std::fs::write(bundle.join("template.yaml"), template.replace("name: static-site", "name: hello-site"))
        .expect("write");
    std::fs::copy(shipped.join("resources.yaml"), bundle.join("resources.yaml")).expect("copy");
    let cloud = |arguments: &[&str], env: Option<&str>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_cloud"));
        command.args(arguments);
        if let Some(value) = env {
            command.env("CLOUD_TEMPLATES", value);
        }
        let output = command.output().expect("cloud");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let dir = directory.path().display().to_string();
    let (ok, listed, _) = cloud(&["--templates-dir", &dir, "templates", "list", "-o", "name"], None);
    assert!(ok && listed.lines().any(|l| l == "hello-site") && listed.lines().any(|l| l == "static-site"), "{listed}");
    let (ok, shown, _) = cloud(&["templates", "show", "hello-site"], Some(&dir));
    assert!(ok && shown.contains(&format!("Source:       {}", bundle.display())), "{shown}");
    let (ok, vetted, _) = cloud(&["templates", "vet", &dir], None);
    assert!(ok && vetted.contains("hello-site: ok"), "{vetted}");
    // A broken bundle there is reported with its position, by vet and by every command.
    std::fs::write(
        bundle.join("template.yaml"),
        "name: hello-site\nversion: 1.0.0\ndescription: d\ncategory: c\nparameters:\n  - name: x\n    typ: String\n",
    )
    .expect("write");
    let (ok, vetted, _) = cloud(&["templates", "vet", &dir], None);
    assert!(!ok && vetted.contains("template.yaml:7:5") && vetted.contains("typ"), "{vetted}");
    let (ok, _, stderr) = cloud(&["templates", "list"], Some(&dir));
    assert!(!ok && stderr.contains("template.yaml:7:5"), "{stderr}");
}

/// A secret parameter reaches a container only as a reference: as a whole env value it
/// becomes `valueFrom.secretKeyRef` to the stack's Secret (the Instance holds no value for any
/// reader to see), an output reading that env variable shows `<redacted>`, and a secret used
/// anywhere else (an image, inside a longer env value) is refused where it is written.
#[tokio::test]
async fn secret_parameters_reach_containers_only_as_references() {
    const TOKEN: &str = "Stack-Secret-Token-9d2f7a61";
    let harness = Harness::start(PREFIX).await;
    let stack = |env_value: &str, image: &str| {
        json!({
            "apiVersion": "minicloud.dev/v1", "kind": "Stack",
            "metadata": {"name": "vault", "namespace": harness.namespace},
            "spec": {
                "parameters": [{"name": "token", "type": "String", "secret": true}],
                "values": {"token": TOKEN},
                "resources": [{
                    "apiVersion": "minicloud.dev/v1", "kind": "Instance",
                    "metadata": {"name": "vault-app"},
                    "spec": {"image": image, "env": [{"name": "TOKEN", "value": env_value}]}
                }],
                "outputs": [{"name": "token", "value": "${resources.vault-app.spec.env.0.value}"}]
            }
        })
    };
    for (env_value, image, field) in [
        ("Bearer ${params.token}", "minicloud/web:local", "spec.resources[0].spec.env[0].value"),
        ("${params.token}", "minicloud/${params.token}", "spec.resources[0].spec.image"),
    ] {
        let (status, body) = harness.try_apply(vec![stack(env_value, image)]).await;
        assert_eq!(status, 400, "{body}");
        let text = body.to_string();
        assert!(text.contains(field) && text.contains("is a secret value"), "{text}");
        assert!(!text.contains(TOKEN), "the refusal does not show the value: {text}");
    }
    assert!(harness.get("stacks", "vault").await.is_none(), "nothing was written");

    harness.apply(vec![stack("${params.token}", "minicloud/web:local")]).await;
    let ready = harness.wait_for("stacks", "vault", "Ready", |o| o["status"]["phase"] == "Ready").await;
    assert_eq!(ready["status"]["outputs"]["token"], "<redacted>");
    let app = harness.get("instances", "vault-app").await.expect("the Instance");
    assert_eq!(
        app["spec"]["env"][0],
        json!({"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "vault-params", "key": "token"}}}),
        "a reference, not the value"
    );
    assert!(!app.to_string().contains(TOKEN), "{app}");
    // The container still gets the value.
    let container = harness.instance_container("vault-app").await;
    let env = docker(&["inspect", "--format", "{{json .Config.Env}}", &container]);
    assert!(env.contains(&format!("TOKEN={TOKEN}")), "{env}");
    harness.finish().await;
}

/// A Secret named like a stack's parameters Secret that is not the stack's is neither
/// overwritten nor read as generated values: the stack fails, naming the clash.
#[tokio::test]
async fn a_foreign_parameters_secret_is_never_overwritten() {
    let harness = Harness::start(PREFIX).await;
    let foreign = json!({
        "apiVersion": "minicloud.dev/v1", "kind": "Secret",
        "metadata": {"name": "clash-params", "namespace": harness.namespace},
        "spec": {"stringData": {"password": "someone-elses-password", "other": "kept"}}
    });
    harness.apply(vec![foreign]).await;
    let stack = json!({
        "apiVersion": "minicloud.dev/v1", "kind": "Stack",
        "metadata": {"name": "clash", "namespace": harness.namespace},
        "spec": {
            "parameters": [{"name": "password", "type": "String", "secret": true, "generate": {"password": 24}}],
            "resources": [{
                "apiVersion": "minicloud.dev/v1", "kind": "Instance", "metadata": {"name": "clash-app"},
                "spec": {"image": "minicloud/web:local", "env": [{"name": "PW", "value": "${params.password}"}]}
            }]
        }
    });
    harness.apply(vec![stack]).await;
    let failed = harness.wait_for("stacks", "clash", "Failed", |o| o["status"]["phase"] == "Failed").await;
    let message = failed["status"]["conditions"].to_string();
    assert!(message.contains("ParametersSecretConflict") && message.contains("secret/clash-params"), "{message}");
    assert!(harness.get("instances", "clash-app").await.is_none(), "nothing runs on someone else's values");
    let kept = harness.cloud(&["secret", "reveal", "clash-params", "password", "-n", &harness.namespace]).1;
    assert_eq!(kept.trim(), "someone-elses-password", "the foreign Secret is untouched");
    let other = harness.cloud(&["secret", "reveal", "clash-params", "other", "-n", &harness.namespace]).1;
    assert_eq!(other.trim(), "kept");
    harness.finish().await;
}

/// A child's values that are only known when the stack controller writes it (here a label of
/// another resource) meet the same policies as a user's write: the denial is the stack's
/// condition, naming the policy, and nothing of the child is written.
#[tokio::test]
async fn children_written_by_the_controller_pass_admission() {
    let harness = Harness::start(PREFIX).await;
    let policy = json!({
        "apiVersion": "minicloud.dev/v1", "kind": "Policy",
        "metadata": {"name": "small", "namespace": harness.namespace},
        "spec": {"enforcement": "Deny", "rules": [{"name": "cpu", "maxCpu": "500m"}]}
    });
    harness.apply(vec![policy]).await;
    let stack = json!({
        "apiVersion": "minicloud.dev/v1", "kind": "Stack",
        "metadata": {"name": "sized", "namespace": harness.namespace},
        "spec": {
            "resources": [
                {"apiVersion": "minicloud.dev/v1", "kind": "Secret",
                 "metadata": {"name": "sized-sizes", "labels": {"cpu": "2"}},
                 "spec": {"stringData": {"note": "sizes live in the labels"}}},
                {"apiVersion": "minicloud.dev/v1", "kind": "Instance", "metadata": {"name": "sized-app"},
                 "spec": {"image": "minicloud/web:local",
                          "resources": {"cpu": "${resources.sized-sizes.metadata.labels.cpu}", "memory": "32Mi"}}}
            ]
        }
    });
    harness.apply(vec![stack]).await;
    let failed = harness.wait_for("stacks", "sized", "Failed", |o| o["status"]["phase"] == "Failed").await;
    let message = failed["status"].to_string();
    assert!(
        message.contains("policy \\\"small\\\"") && message.contains("cpu 2 is more than the 500m allowed"),
        "{message}"
    );
    assert!(harness.get("instances", "sized-app").await.is_none(), "the denied child was not written");
    assert!(harness.containers("Instance", false).is_empty());
    // The policy relaxed: the stack goes on by itself.
    let relaxed = json!({
        "apiVersion": "minicloud.dev/v1", "kind": "Policy",
        "metadata": {"name": "small", "namespace": harness.namespace},
        "spec": {"enforcement": "Deny", "rules": [{"name": "cpu", "maxCpu": "4"}]}
    });
    harness.apply(vec![relaxed]).await;
    harness.wait_for("stacks", "sized", "Ready", |o| o["status"]["phase"] == "Ready").await;
    harness.finish().await;
}
