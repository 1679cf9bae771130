//! Secret values encrypted at rest, and kept out of every answer.
//!
//! - **Sealing.** The SQL store writes each value of a Secret's `spec.stringData` as an
//!   envelope `mcenc:v1:KEYID:BASE64(nonce ‖ ciphertext)`: XChaCha20-Poly1305 with a fresh
//!   random 24-byte nonce per value, and the Secret's `namespace/name/key` as associated data,
//!   so a ciphertext copied into another Secret (or under another key) does not open. Object
//!   rows and change-log rows hold envelopes only; the store opens them for `get` and `list`,
//!   which is how controllers read values.
//! - **Keys.** 32 random bytes from the OS. Read from `MINICLOUD_SECRET_KEY` (base64), or from a
//!   key file (`--secret-key-file`, default `DATA_DIR/secret.key`), created with mode 0600 on
//!   first start. A key file holds one base64 key per line: the first seals, the others only
//!   open (what a rotation leaves while it re-encrypts). A key's id is the start of its
//!   SHA-256, so an envelope names the key it needs.
//! - **Rotation.** A new key is written first as the primary, next to the old one; everything is
//!   re-encrypted; then the old key leaves the file. At no point is a value unreadable, and a
//!   crash in between leaves both keys in the file. Old keys stay in memory until the process
//!   ends, for reads that raced the rotation.
//! - **Stacks** hold the values of their `secret: true` parameters in `spec.values`: those are
//!   sealed and redacted the same way (associated data `Stack:namespace/name/key`).
//! - **Redaction.** Whatever the API sends (GET, lists, watches, write answers) carries
//!   [`REDACTED`](minicloud_model::redact::REDACTED) instead of each value; `reveal` is the one way to read a value back.

use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use minicloud_crds::Object;
use minicloud_model::files::write_private_file;
use minicloud_model::redact::{redact_applied_copies, sensitive_map, sensitive_names};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The environment variable that may hold the key (base64 of 32 bytes).
pub const KEY_ENV: &str = "MINICLOUD_SECRET_KEY";
/// The key file's name in the data directory.
pub const KEY_FILE: &str = "secret.key";
/// Every sealed value starts with this.
const ENVELOPE: &str = "mcenc:v1:";
const KIND: &str = "Secret";
/// Stacks hold the values of their `secret: true` parameters in `spec.values`.
const STACK: &str = "Stack";

/// What can go wrong with keys and envelopes.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{source_name} does not hold a usable key: {reason} (expected the base64 of 32 random bytes, e.g. from `head -c 32 /dev/urandom | base64`)")]
    BadKey { source_name: String, reason: String },
    #[error("cannot read or write the key file {path}: {reason}")]
    KeyFile { path: PathBuf, reason: String },
    #[error("{what} is sealed with key {id}, which this server does not have: start it with the key file (--secret-key-file) or {KEY_ENV} the Secrets were written with")]
    UnknownKey { what: String, id: String },
    #[error("{what} does not open with its key: it was altered, or copied from another Secret")]
    Tampered { what: String },
    #[error("{what} holds a damaged envelope: {reason}")]
    Damaged { what: String, reason: String },
    #[error("the key comes from {KEY_ENV}: a rotation cannot write the new key there; use a key file (--secret-key-file) to rotate")]
    NotRotatable,
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),
}

/// One key.
#[derive(Clone)]
struct Key {
    id: String,
    cipher: XChaCha20Poly1305,
    bytes: [u8; 32],
}

impl Key {
    fn from_bytes(bytes: [u8; 32]) -> Key {
        let digest = Sha256::digest(bytes);
        let id = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
        let cipher = XChaCha20Poly1305::new(&bytes.into());
        Key { id, cipher, bytes }
    }

    fn generate() -> Result<Key, SecretError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|error| SecretError::Random(error.to_string()))?;
        Ok(Key::from_bytes(bytes))
    }

    fn parse(text: &str, source_name: &str) -> Result<Key, SecretError> {
        let bad = |reason: String| SecretError::BadKey { source_name: source_name.to_owned(), reason };
        let decoded = STANDARD.decode(text.trim()).map_err(|error| bad(format!("not base64 ({error})")))?;
        let bytes: [u8; 32] =
            decoded.try_into().map_err(|decoded: Vec<u8>| bad(format!("{} bytes instead of 32", decoded.len())))?;
        Ok(Key::from_bytes(bytes))
    }

    fn encoded(&self) -> String {
        STANDARD.encode(self.bytes)
    }
}

/// The keys in use: the first seals, all open.
#[derive(Clone)]
struct Keyring {
    keys: Vec<Key>,
}

impl Keyring {
    fn primary(&self) -> &Key {
        &self.keys[0]
    }

    fn find(&self, id: &str) -> Option<&Key> {
        self.keys.iter().find(|key| key.id == id)
    }
}

/// Where the keys came from: rotation writes back there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyOrigin {
    File(PathBuf),
    Environment,
    /// Given by the program (tests, benchmarks): nothing to write back.
    Memory,
}

/// The server's secret keys, shared by the store (sealing, opening) and the API (rotation).
pub struct SecretKeys {
    ring: RwLock<Keyring>,
    origin: KeyOrigin,
}

impl SecretKeys {
    /// The keys of a server: `MINICLOUD_SECRET_KEY` when set, else the key file (`file`, or
    /// `DATA_DIR/secret.key`), created with mode 0600 when it does not exist.
    pub fn load(file: Option<&Path>, data_dir: &Path) -> Result<SecretKeys, SecretError> {
        if let Ok(text) = std::env::var(KEY_ENV) {
            let key = Key::parse(&text, KEY_ENV)?;
            return Ok(SecretKeys { ring: RwLock::new(Keyring { keys: vec![key] }), origin: KeyOrigin::Environment });
        }
        let path = file.map_or_else(|| data_dir.join(KEY_FILE), Path::to_path_buf);
        let keys = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let name = path.display().to_string();
                let keys = text
                    .lines()
                    .map(str::trim)
                    .filter(|line| !line.is_empty() && !line.starts_with('#'))
                    .map(|line| Key::parse(line, &name))
                    .collect::<Result<Vec<Key>, SecretError>>()?;
                if keys.is_empty() {
                    return Err(SecretError::BadKey { source_name: name, reason: "the file holds no key".into() });
                }
                keys
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let key = Key::generate()?;
                write_key_file(&path, std::slice::from_ref(&key))?;
                tracing::info!(path = %path.display(), "created the secret key file (keep it: Secrets cannot be read without it)");
                vec![key]
            }
            Err(error) => return Err(SecretError::KeyFile { path, reason: error.to_string() }),
        };
        Ok(SecretKeys { ring: RwLock::new(Keyring { keys }), origin: KeyOrigin::File(path) })
    }

    /// Keys given by the program, e.g. a fixed key in tests. The first seals.
    pub fn from_bytes(keys: &[[u8; 32]]) -> SecretKeys {
        let keys = if keys.is_empty() {
            vec![Key::from_bytes([0; 32])]
        } else {
            keys.iter().map(|bytes| Key::from_bytes(*bytes)).collect()
        };
        SecretKeys { ring: RwLock::new(Keyring { keys }), origin: KeyOrigin::Memory }
    }

    /// Where the keys came from.
    pub fn origin(&self) -> &KeyOrigin {
        &self.origin
    }

    fn ring(&self) -> Keyring {
        self.ring.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The id of the key that seals.
    pub fn primary_id(&self) -> String {
        self.ring().primary().id.clone()
    }

    /// A value for one `purpose` derived from the key that seals (SHA-256 of both): the same on
    /// every replica that shares the keys, and unknowable without them.
    pub fn derived(&self, purpose: &str) -> String {
        use sha2::Digest;
        let ring = self.ring();
        let digest = sha2::Sha256::new()
            .chain_update(b"minicloud derived value\n")
            .chain_update(purpose.as_bytes())
            .chain_update(b"\n")
            .chain_update(ring.primary().bytes)
            .finalize();
        digest.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    /// Seals every value of a Secret that is not sealed yet (other kinds are left alone), and
    /// redacts the copies of its values that applied-configuration annotations hold: nothing
    /// sensitive is stored in clear.
    pub fn seal_object(&self, object: &mut Object) -> Result<(), SecretError> {
        redact_applied_copies(&object.kind, &mut object.metadata.annotations);
        self.transform(object, |ring, value, aad| {
            if value.starts_with(ENVELOPE) {
                Ok(None)
            } else {
                seal(ring.primary(), value, aad).map(Some)
            }
        })
    }

    /// Opens every value of a Secret (plain values, written before encryption, pass).
    pub fn open_object(&self, object: &mut Object) -> Result<(), SecretError> {
        self.transform(object, |ring, value, aad| open(ring, value, aad).map(Some))
    }

    /// Seals again, under the primary key, every value that is plain or sealed by another key.
    /// True when something changed.
    pub fn reseal_object(&self, object: &mut Object) -> Result<bool, SecretError> {
        // Copies in annotations written before they were redacted are redacted now.
        let mut changed = redact_applied_copies(&object.kind, &mut object.metadata.annotations);
        self.transform(object, |ring, value, aad| {
            let prefix = format!("{ENVELOPE}{}:", ring.primary().id);
            if value.starts_with(&prefix) {
                return Ok(None);
            }
            changed = true;
            let plain = open(ring, value, aad)?;
            seal(ring.primary(), &plain, aad).map(Some)
        })?;
        Ok(changed)
    }

    /// Applies `change` to each value of a Secret's `spec.stringData`; `Ok(None)` keeps it.
    fn transform(
        &self,
        object: &mut Object,
        mut change: impl FnMut(&Keyring, &str, &str) -> Result<Option<String>, SecretError>,
    ) -> Result<(), SecretError> {
        let ring = self.ring();
        let aad = match object.kind.as_str() {
            KIND => format!("{}/{}/", object.namespace(), object.metadata.name),
            // Apart from Secrets' (a Secret and a Stack may share a name).
            STACK => format!("Stack:{}/{}/", object.namespace(), object.metadata.name),
            _ => return Ok(()),
        };
        let names = sensitive_names(&object.kind, &object.spec);
        let Some(data) = sensitive_map(&object.kind, &mut object.spec) else { return Ok(()) };
        for (key, value) in data.iter_mut() {
            if !names.as_ref().is_none_or(|names| names.contains(key)) {
                continue;
            }
            let Some(text) = value.as_str() else { continue };
            if let Some(next) = change(&ring, text, &format!("{aad}{key}"))? {
                *value = Value::String(next);
            }
        }
        Ok(())
    }

    /// Starts a rotation: a new key becomes the primary, the old ones stay to open what they
    /// sealed, and the key file says so before anything is re-encrypted. Returns the new id.
    pub fn begin_rotation(&self) -> Result<String, SecretError> {
        let path = match &self.origin {
            KeyOrigin::File(path) => Some(path.clone()),
            KeyOrigin::Environment => return Err(SecretError::NotRotatable),
            KeyOrigin::Memory => None,
        };
        let key = Key::generate()?;
        let id = key.id.clone();
        let mut ring = self.ring.write().unwrap_or_else(PoisonError::into_inner);
        let mut keys = vec![key];
        keys.extend(ring.keys.iter().cloned());
        if let Some(path) = &path {
            write_key_file(path, &keys)?;
        }
        ring.keys = keys;
        Ok(id)
    }

    /// Ends a rotation once everything is sealed by the primary key: the key file keeps only
    /// it. The old keys stay in memory, for reads that started before the re-encryption.
    pub fn finish_rotation(&self) -> Result<(), SecretError> {
        let ring = self.ring();
        if let KeyOrigin::File(path) = &self.origin {
            write_key_file(path, std::slice::from_ref(ring.primary()))?;
        }
        Ok(())
    }
}

/// An envelope of `value` under `key`, bound to `aad`.
fn seal(key: &Key, value: &str, aad: &str) -> Result<String, SecretError> {
    let mut nonce = [0u8; 24];
    getrandom::fill(&mut nonce).map_err(|error| SecretError::Random(error.to_string()))?;
    let sealed = key
        .cipher
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: value.as_bytes(), aad: aad.as_bytes() })
        .map_err(|_| SecretError::Damaged { what: aad.to_owned(), reason: "encryption failed".into() })?;
    let mut bytes = nonce.to_vec();
    bytes.extend(sealed);
    Ok(format!("{ENVELOPE}{}:{}", key.id, URL_SAFE_NO_PAD.encode(bytes)))
}

/// The value inside an envelope (a plain value is returned as it is).
fn open(ring: &Keyring, value: &str, aad: &str) -> Result<String, SecretError> {
    let Some(rest) = value.strip_prefix(ENVELOPE) else { return Ok(value.to_owned()) };
    let damaged = |reason: &str| SecretError::Damaged { what: aad.to_owned(), reason: reason.to_owned() };
    let (id, data) = rest.split_once(':').ok_or_else(|| damaged("no key id"))?;
    let key = ring.find(id).ok_or_else(|| SecretError::UnknownKey { what: aad.to_owned(), id: id.to_owned() })?;
    let bytes = URL_SAFE_NO_PAD.decode(data).map_err(|_| damaged("not base64"))?;
    if bytes.len() < 24 {
        return Err(damaged("too short"));
    }
    let (nonce, sealed) = bytes.split_at(24);
    let plain = key
        .cipher
        .decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad: aad.as_bytes() })
        .map_err(|_| SecretError::Tampered { what: aad.to_owned() })?;
    String::from_utf8(plain).map_err(|_| damaged("not UTF-8"))
}

/// Writes a key file atomically with mode 0600.
fn write_key_file(path: &Path, keys: &[Key]) -> Result<(), SecretError> {
    let fail = |error: std::io::Error| SecretError::KeyFile { path: path.to_path_buf(), reason: error.to_string() };
    let mut text = String::from("# minicloud secret keys: the first seals, the others only open. Keep this file.\n");
    for key in keys {
        text.push_str(&key.encoded());
        text.push('\n');
    }
    write_private_file(path, text.as_bytes()).map_err(fail)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use minicloud_model::redact::{redact_document, redact_object, APPLIED_COPIES, REDACTED};

    fn secret(namespace: &str, name: &str, data: Value) -> Object {
        serde_json::from_value(json!({
            "apiVersion": "minicloud.dev/v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"stringData": data}
        }))
        .expect("secret")
    }

    fn keys() -> SecretKeys {
        SecretKeys::from_bytes(&[[7; 32]])
    }

    #[test]
    fn values_are_sealed_with_their_own_nonce_and_open_again() {
        let keys = keys();
        let mut object = secret("default", "db", json!({"password": "hunter2-hunter2", "user": "app"}));
        keys.seal_object(&mut object).expect("seal");
        let sealed = object.spec["stringData"]["password"].as_str().expect("string").to_owned();
        assert!(sealed.starts_with("mcenc:v1:") && !sealed.contains("hunter2"), "{sealed}");
        let mut again = secret("default", "db", json!({"password": "hunter2-hunter2", "user": "app"}));
        keys.seal_object(&mut again).expect("seal");
        assert_ne!(again.spec["stringData"]["password"], object.spec["stringData"]["password"], "fresh nonces");
        let before = object.clone();
        keys.seal_object(&mut object).expect("sealing twice");
        assert_eq!(object, before, "sealed values are not sealed again");
        keys.open_object(&mut object).expect("open");
        assert_eq!(object.spec["stringData"], json!({"password": "hunter2-hunter2", "user": "app"}));
    }

    #[test]
    fn a_ciphertext_moved_to_another_secret_or_key_does_not_open() {
        let keys = keys();
        let mut original = secret("default", "db", json!({"password": "s3cret"}));
        keys.seal_object(&mut original).expect("seal");
        let envelope = original.spec["stringData"]["password"].clone();
        for (namespace, name, key) in
            [("default", "other", "password"), ("staging", "db", "password"), ("default", "db", "pw")]
        {
            let mut moved = secret(namespace, name, json!({ key: envelope.clone() }));
            let error = keys.open_object(&mut moved).expect_err("moved");
            assert!(matches!(error, SecretError::Tampered { .. }), "{error}");
        }
        let other = SecretKeys::from_bytes(&[[9; 32]]);
        let mut copy = original.clone();
        let error = other.open_object(&mut copy).expect_err("another key");
        assert!(matches!(error, SecretError::UnknownKey { .. }), "{error}");
        let mut flipped = original.clone();
        let text = envelope.as_str().expect("string");
        let last = if text.ends_with('A') { 'B' } else { 'A' };
        flipped.spec["stringData"]["password"] = json!(format!("{}{last}", &text[..text.len() - 1]));
        assert!(keys.open_object(&mut flipped).is_err(), "an altered ciphertext does not open");
    }

    #[test]
    fn other_kinds_are_untouched_and_redaction_hides_every_value() {
        let keys = keys();
        let mut instance: Object = serde_json::from_value(json!({
            "apiVersion": "minicloud.dev/v1", "kind": "Instance", "metadata": {"name": "web"},
            "spec": {"stringData": {"a": "b"}, "image": "web"}
        }))
        .expect("instance");
        let before = instance.clone();
        keys.seal_object(&mut instance).expect("seal");
        redact_object(&mut instance);
        assert_eq!(instance, before);
        let mut object = secret("default", "db", json!({"password": "s3cret", "user": "app"}));
        redact_object(&mut object);
        assert_eq!(object.spec["stringData"], json!({"password": REDACTED, "user": REDACTED}));
        let document = serde_json::to_string(&secret("default", "db", json!({"password": "s3cret"}))).expect("json");
        let shown = redact_document(&document);
        assert!(!shown.contains("s3cret") && shown.contains(REDACTED), "{shown}");
        assert_eq!(redact_document("not json"), "{}");
    }

    #[test]
    fn copies_in_applied_configuration_annotations_are_redacted() {
        let keys = keys();
        let mut object = secret("default", "db", json!({"password": "s3cret"}));
        let kubectl = json!({"apiVersion": "minicloud.dev/v1", "kind": "Secret", "metadata": {"name": "db"},
            "spec": {"stringData": {"password": "s3cret"}}});
        object.metadata.annotations.insert(APPLIED_COPIES[0].into(), kubectl.to_string());
        object.metadata.annotations.insert(APPLIED_COPIES[1].into(), "not json s3cret".into());
        object.metadata.annotations.insert("note".into(), "kept".into());
        let mut stored = object.clone();
        keys.seal_object(&mut stored).expect("seal");
        let text = serde_json::to_string(&stored).expect("json");
        assert!(!text.contains("s3cret"), "{text}");
        let copy: Value = serde_json::from_str(&stored.metadata.annotations[APPLIED_COPIES[0]]).expect("json");
        assert_eq!(copy["spec"]["stringData"]["password"], REDACTED, "kubectl's copy keeps the key");
        assert_eq!(stored.metadata.annotations["note"], "kept");
        // Shown, and as a raw document (lists, watches), and resealed (older rows): redacted too.
        let mut shown = object.clone();
        redact_object(&mut shown);
        assert!(!serde_json::to_string(&shown).expect("json").contains("s3cret"));
        assert!(!redact_document(&serde_json::to_string(&object).expect("json")).contains("s3cret"));
        let mut old = object.clone();
        assert!(keys.reseal_object(&mut old).expect("reseal"));
        assert!(!serde_json::to_string(&old).expect("json").contains("s3cret"));
    }

    #[test]
    fn rotation_reseals_under_the_new_key_and_old_envelopes_still_open_meanwhile() {
        let directory = tempfile::tempdir().expect("dir");
        let path = directory.path().join("keys").join(KEY_FILE);
        let keys = SecretKeys::load(Some(&path), directory.path()).expect("created");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("file").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            let dir_mode = std::fs::metadata(path.parent().expect("dir")).expect("dir").permissions().mode() & 0o777;
            assert_eq!(dir_mode, 0o700);
        }
        let old_id = keys.primary_id();
        let mut object = secret("default", "db", json!({"password": "s3cret"}));
        keys.seal_object(&mut object).expect("seal");
        let new_id = keys.begin_rotation().expect("rotate");
        assert_ne!(new_id, old_id);
        let reloaded = SecretKeys::load(Some(&path), directory.path()).expect("reload");
        assert_eq!(reloaded.primary_id(), new_id, "the file names the new key first");
        let mut copy = object.clone();
        reloaded.open_object(&mut copy).expect("the old key is still in the file");
        assert!(keys.reseal_object(&mut object).expect("reseal"), "changed");
        assert!(object.spec["stringData"]["password"].as_str().expect("s").contains(&format!(":{new_id}:")));
        assert!(!keys.reseal_object(&mut object).expect("reseal"), "nothing left to do");
        keys.finish_rotation().expect("finish");
        let reloaded = SecretKeys::load(Some(&path), directory.path()).expect("reload");
        let mut copy = object.clone();
        reloaded.open_object(&mut copy).expect("opens with the new key alone");
        assert_eq!(copy.spec["stringData"]["password"], "s3cret");
        let text = std::fs::read_to_string(&path).expect("file");
        assert_eq!(text.lines().filter(|l| !l.starts_with('#')).count(), 1, "only the new key is left");
    }

    #[test]
    fn bad_keys_are_refused_with_what_to_do() {
        let directory = tempfile::tempdir().expect("dir");
        let path = directory.path().join(KEY_FILE);
        std::fs::write(&path, "not-base64!!\n").expect("write");
        let error = SecretKeys::load(Some(&path), directory.path()).err().expect("refused").to_string();
        assert!(error.contains("not base64") && error.contains("/dev/urandom"), "{error}");
        std::fs::write(&path, format!("{}\n", STANDARD.encode([1u8; 16]))).expect("write");
        let error = SecretKeys::load(Some(&path), directory.path()).err().expect("refused").to_string();
        assert!(error.contains("16 bytes instead of 32"), "{error}");
        std::fs::write(&path, "# only a comment\n").expect("write");
        assert!(SecretKeys::load(Some(&path), directory.path()).is_err());
    }
}
