//! The templates marketplace: bundles of manifests a Stack is made from.
//!
//! A bundle is a directory `NAME/` with `template.yaml` (name, semver version, description,
//! category, parameters, outputs, notes) and `resources.yaml` (the Stack's resources, one YAML
//! document each, with `${params.X}`, `${stack.name}` and `${resources.NAME.PATH}` references).
//! The bundles under `templates/` ship inside the binary; directories given with
//! `--templates-dir` or `CLOUD_TEMPLATES` (colon-separated) add more, and a bundle there
//! replaces a shipped one of the same name.
//!
//! A bundle becomes a Stack manifest by [`Bundle::render`] (`cloud templates render`/`install`);
//! a Stack that names a template (`spec.templateRef`) without resources of its own is filled
//! from the catalog when it is validated ([`expand`]), by the CLI and by the server alike.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{OnceLock, RwLock};

use minicloud_crds::stack::{OutputSpec, ParameterSpec, ParameterType, StackResource};
use minicloud_crds::validation::check_parameter_value;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::yaml;

/// The environment variable naming extra bundle directories (colon-separated).
pub(crate) const TEMPLATES_ENV: &str = "CLOUD_TEMPLATES";

macro_rules! shipped {
    ($($name:literal),* $(,)?) => {
        &[$(($name,
            include_str!(concat!("../../templates/", $name, "/template.yaml")),
            include_str!(concat!("../../templates/", $name, "/resources.yaml")))),*]
    };
}

/// The bundles in the binary: (directory, template.yaml, resources.yaml).
pub(crate) const SHIPPED: &[(&str, &str, &str)] = shipped!(
    "static-site",
    "web-app-autoscaling",
    "web-app-postgres",
    "redis-cache",
    "wordpress-mariadb",
    "django-postgres",
);

/// What can be wrong with a bundle or with what is asked of it.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
    #[error("cannot read {path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("no template {name:?}{version}; `cloud templates list` shows the templates there are")]
    Unknown { name: String, version: String },
    #[error("{0}")]
    Values(String),
}

/// One thing wrong with a value asked of a bundle: the parameter it concerns and what is
/// wrong, in the same words for `cloud templates install --set` and the console's form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValueProblem {
    /// The parameter (or the unknown key given).
    pub parameter: String,
    /// The text given, when one was.
    pub given: Option<String>,
    pub message: String,
}

impl std::fmt::Display for ValueProblem {
    /// As `--set` reports it: `--set KEY=TEXT: MESSAGE`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let given = self.given.as_deref().unwrap_or("VALUE");
        write!(f, "--set {}={given}: {}", self.parameter, self.message)
    }
}

/// The `template.yaml` of a bundle.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TemplateFile {
    name: String,
    version: String,
    description: String,
    category: String,
    #[serde(default)]
    parameters: Vec<ParameterSpec>,
    #[serde(default)]
    outputs: Vec<OutputSpec>,
    #[serde(default)]
    notes: String,
}

/// One bundle.
#[derive(Clone, Debug)]
pub struct Bundle {
    pub name: String,
    pub version: String,
    pub description: String,
    pub category: String,
    pub parameters: Vec<ParameterSpec>,
    pub outputs: Vec<OutputSpec>,
    pub notes: String,
    pub resources: Vec<StackResource>,
    /// `shipped` or the directory it was read from.
    pub source: String,
}

fn invalid(file: &str, message: impl Into<String>) -> TemplateError {
    TemplateError::Invalid { file: file.to_owned(), message: message.into() }
}

/// `x.y.z` with numbers (and an optional `-pre` part).
fn is_semver(version: &str) -> bool {
    let core = version.split_once('-').map_or(version, |(core, _)| core);
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3 && parts.iter().all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
}

/// A YAML document as a typed value; errors name the file, position and field.
fn typed<T: serde::de::DeserializeOwned>(file: &str, document: &yaml::Document) -> Result<T, TemplateError> {
    serde_path_to_error::deserialize(&document.value).map_err(|error| {
        let path = error.path().to_string();
        let position = document.spans.key_position(&path_of(&path)).unwrap_or(document.position);
        invalid(&format!("{file}:{}:{}", position.line, position.column), format!("{path}: {}", error.inner()))
    })
}

/// A serde path (`parameters[0].type`) as a field path.
fn path_of(text: &str) -> minicloud_crds::FieldPath {
    let mut path = minicloud_crds::FieldPath::root();
    for part in text.split('.').filter(|p| !p.is_empty() && *p != "?") {
        let (key, rest) = part.split_once('[').unwrap_or((part, ""));
        if !key.is_empty() {
            path = path.key(key);
        }
        for index in rest.split('[').filter_map(|i| i.trim_end_matches(']').parse::<usize>().ok()) {
            path = path.index(index);
        }
    }
    path
}

impl Bundle {
    /// Reads a bundle from its two files' text. `directory` is the bundle's directory name
    /// (the template's name must be it); `origin` says where it came from, for messages.
    pub fn parse(directory: &str, template: &str, resources: &str, origin: &str) -> Result<Bundle, TemplateError> {
        let template_file = format!("{origin}/template.yaml");
        let resources_file = format!("{origin}/resources.yaml");
        let documents = yaml::parse_documents(template).map_err(|error| {
            invalid(&format!("{template_file}:{}:{}", error.position.line, error.position.column), error.message)
        })?;
        let [document] = documents.as_slice() else {
            return Err(invalid(
                &template_file,
                "holds one YAML document: name, version, description, category, parameters, outputs, notes",
            ));
        };
        let file: TemplateFile = typed(&template_file, document)?;
        if file.name != directory {
            return Err(invalid(
                &template_file,
                format!("name {:?} must be the bundle's directory name {directory:?}", file.name),
            ));
        }
        if !is_semver(&file.version) {
            return Err(invalid(
                &template_file,
                format!("version {:?} is not a semantic version (MAJOR.MINOR.PATCH)", file.version),
            ));
        }
        if file.category.trim().is_empty() || file.description.trim().is_empty() {
            return Err(invalid(&template_file, "give a description and a category"));
        }
        let documents = yaml::parse_documents(resources).map_err(|error| {
            invalid(&format!("{resources_file}:{}:{}", error.position.line, error.position.column), error.message)
        })?;
        if documents.is_empty() {
            return Err(invalid(&resources_file, "holds no resource"));
        }
        let resources = documents
            .iter()
            .map(|document| typed::<StackResource>(&resources_file, document))
            .collect::<Result<_, _>>()?;
        Ok(Bundle {
            name: file.name,
            version: file.version,
            description: file.description,
            category: file.category,
            parameters: file.parameters,
            outputs: file.outputs,
            notes: file.notes,
            resources,
            source: origin.to_owned(),
        })
    }

    /// Reads the bundle in `directory`.
    pub fn read(directory: &Path) -> Result<Bundle, TemplateError> {
        let read = |file: &str| {
            let path = directory.join(file);
            std::fs::read_to_string(&path)
                .map_err(|error| TemplateError::Unreadable { path, reason: error.to_string() })
        };
        let name = directory.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Bundle::parse(&name, &read("template.yaml")?, &read("resources.yaml")?, &directory.display().to_string())
    }

    /// Typed values from `KEY=VALUE` settings: each key must be a parameter, each value fit
    /// it (type, allowed values, range, pattern). Every problem, as `--set` reports them.
    pub fn values(&self, settings: &[(String, String)]) -> Result<BTreeMap<String, Value>, TemplateError> {
        self.checked_values(settings).map_err(|problems| {
            TemplateError::Values(problems.iter().map(ValueProblem::to_string).collect::<Vec<_>>().join("\n"))
        })
    }

    /// Like [`Bundle::values`], with each problem tied to its parameter (the console's form
    /// shows each under its field).
    pub fn checked_values(&self, settings: &[(String, String)]) -> Result<BTreeMap<String, Value>, Vec<ValueProblem>> {
        let mut values = BTreeMap::new();
        let mut problems = Vec::new();
        let mut problem = |parameter: &str, given: Option<&str>, message: String| {
            problems.push(ValueProblem { parameter: parameter.to_owned(), given: given.map(str::to_owned), message })
        };
        for (key, text) in settings {
            let Some(parameter) = self.parameters.iter().find(|p| &p.name == key) else {
                let known: Vec<&str> = self.parameters.iter().map(|p| p.name.as_str()).collect();
                let message =
                    format!("template {} has no parameter {key:?}; its parameters: {}", self.name, known.join(", "));
                problem(key, Some(text), message);
                continue;
            };
            let value = match parameter.type_ {
                ParameterType::String => Some(Value::String(text.clone())),
                ParameterType::Integer => text.trim().parse::<i64>().ok().map(Value::from),
                ParameterType::Number => text.trim().parse::<f64>().ok().map(Value::from),
                ParameterType::Boolean => text.trim().parse::<bool>().ok().map(Value::from),
            };
            match value {
                None => problem(key, Some(text), format!("parameter {key:?} expects a {:?}", parameter.type_)),
                Some(value) => match check_parameter_value(parameter, &value) {
                    Ok(()) => {
                        values.insert(key.clone(), value);
                    }
                    Err(message) => problem(key, Some(text), message),
                },
            }
        }
        for parameter in &self.parameters {
            let provided =
                parameter.default.is_some() || parameter.generate.is_some() || values.contains_key(&parameter.name);
            if !provided && !settings.iter().any(|(key, _)| key == &parameter.name) {
                let message = format!(
                    "parameter {:?} has no default: give it a value{}",
                    parameter.name,
                    parameter.description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default()
                );
                problem(&parameter.name, None, message);
            }
        }
        if problems.is_empty() {
            Ok(values)
        } else {
            Err(problems)
        }
    }

    /// The Stack manifest named `stack` this bundle makes with `values`.
    pub fn render(&self, stack: &str, namespace: Option<&str>, values: &BTreeMap<String, Value>) -> Value {
        let mut metadata = json!({"name": stack, "labels": {"minicloud.dev/template": self.name}});
        if let Some(namespace) = namespace {
            metadata["namespace"] = json!(namespace);
        }
        let mut spec = json!({
            "templateRef": {"name": self.name, "version": self.version},
            "parameters": self.parameters,
            "resources": self.resources,
            "outputs": self.outputs,
        });
        if !values.is_empty() {
            spec["values"] = json!(values);
        }
        json!({"apiVersion": minicloud_crds::API_VERSION, "kind": "Stack", "metadata": metadata, "spec": spec})
    }
}

/// Every bundle: the shipped ones, then those of the extra directories (which replace shipped
/// ones of the same name).
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    pub bundles: Vec<Bundle>,
}

impl Catalog {
    /// The shipped bundles plus those under each of `directories` (each holds bundle
    /// directories).
    pub fn load(directories: &[PathBuf]) -> Result<Catalog, TemplateError> {
        let mut bundles: Vec<Bundle> = SHIPPED
            .iter()
            .map(|(name, template, resources)| Bundle::parse(name, template, resources, &format!("templates/{name}")))
            .collect::<Result<_, _>>()?;
        for directory in directories {
            let entries = std::fs::read_dir(directory)
                .map_err(|error| TemplateError::Unreadable { path: directory.clone(), reason: error.to_string() })?;
            let mut found: Vec<PathBuf> =
                entries.flatten().map(|e| e.path()).filter(|p| p.join("template.yaml").is_file()).collect();
            found.sort();
            for path in found {
                let bundle = Bundle::read(&path)?;
                bundles.retain(|known| known.name != bundle.name);
                bundles.push(bundle);
            }
        }
        bundles.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Catalog { bundles })
    }

    /// A bundle by name (and version, when given).
    pub fn get(&self, name: &str, version: Option<&str>) -> Result<&Bundle, TemplateError> {
        self.bundles
            .iter()
            .find(|bundle| bundle.name == name && version.is_none_or(|v| v == bundle.version))
            .ok_or_else(|| TemplateError::Unknown {
                name: name.to_owned(),
                version: version.map(|v| format!(" version {v}")).unwrap_or_default(),
            })
    }
}

static EXTRA_DIRECTORIES: RwLock<Vec<PathBuf>> = RwLock::new(Vec::new());
static CATALOG: OnceLock<Result<Catalog, String>> = OnceLock::new();

/// Adds bundle directories (`--templates-dir`); call before the catalog is first used.
pub fn add_directories(directories: &[PathBuf]) {
    EXTRA_DIRECTORIES.write().unwrap_or_else(std::sync::PoisonError::into_inner).extend(directories.iter().cloned());
}

/// The process's catalog: shipped bundles, `--templates-dir` and `CLOUD_TEMPLATES`.
pub fn catalog() -> Result<&'static Catalog, String> {
    CATALOG
        .get_or_init(|| {
            let mut directories = EXTRA_DIRECTORIES.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
            if let Ok(listed) = std::env::var(TEMPLATES_ENV) {
                directories.extend(listed.split(':').filter(|d| !d.is_empty()).map(PathBuf::from));
            }
            Catalog::load(&directories).map_err(|error| error.to_string())
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Fills a Stack that names a template and has no resources of its own with the template's
/// parameters, resources and outputs. `Err` says what is wrong with the reference.
pub(crate) fn expand(document: &mut Value) -> Result<(), String> {
    if document.get("kind").and_then(Value::as_str) != Some("Stack") {
        return Ok(());
    }
    let Some(spec) = document.get_mut("spec").and_then(Value::as_object_mut) else { return Ok(()) };
    let Some(reference) = spec.get("templateRef").cloned() else { return Ok(()) };
    let has_resources = spec.get("resources").and_then(Value::as_array).is_some_and(|r| !r.is_empty());
    if has_resources {
        return Ok(());
    }
    let name = reference.get("name").and_then(Value::as_str).unwrap_or_default();
    let version = reference.get("version").and_then(Value::as_str);
    let catalog = catalog()?;
    let bundle = catalog.get(name, version).map_err(|error| error.to_string())?;
    spec.entry("parameters").or_insert_with(|| json!(bundle.parameters));
    spec.insert("resources".into(), json!(bundle.resources));
    spec.entry("outputs").or_insert_with(|| json!(bundle.outputs));
    if let Some(reference) = spec.get_mut("templateRef").and_then(Value::as_object_mut) {
        reference.entry("version").or_insert_with(|| json!(bundle.version));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_bundle_parses_and_every_template_directory_is_shipped() {
        let catalog = Catalog::load(&[]).expect("shipped bundles");
        assert_eq!(catalog.bundles.len(), SHIPPED.len());
        let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates");
        let mut on_disk: Vec<String> = std::fs::read_dir(directory)
            .expect("templates/")
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let mut shipped: Vec<String> = SHIPPED.iter().map(|(name, _, _)| (*name).to_owned()).collect();
        shipped.sort();
        assert_eq!(on_disk, shipped, "a bundle under templates/ is not in SHIPPED (or the other way round)");
    }

    #[test]
    fn the_guide_lists_every_shipped_bundle_and_its_parameters() {
        let guide = include_str!("../../docs/templates.md");
        for bundle in Catalog::load(&[]).expect("catalog").bundles {
            assert!(guide.contains(&format!("`{}`", bundle.name)), "docs/templates.md misses {}", bundle.name);
            for parameter in &bundle.parameters {
                assert!(
                    guide.contains(&format!("`{}`", parameter.name)),
                    "docs/templates.md misses {}.{}",
                    bundle.name,
                    parameter.name
                );
            }
        }
    }

    #[test]
    fn settings_are_typed_and_checked() {
        let catalog = Catalog::load(&[]).expect("catalog");
        let bundle = catalog.get("static-site", None).expect("static-site");
        let values = bundle.values(&[("replicas".into(), "3".into())]).expect("values");
        assert_eq!(values["replicas"], json!(3));
        let error = bundle.values(&[("replicas".into(), "three".into())]).expect_err("a word").to_string();
        assert!(error.contains("expects a Integer"), "{error}");
        let error = bundle.values(&[("replica".into(), "3".into())]).expect_err("unknown").to_string();
        assert!(error.contains("has no parameter \"replica\""), "{error}");
        let error = bundle.values(&[("replicas".into(), "99".into())]).expect_err("range").to_string();
        assert!(error.contains("outside the range"), "{error}");
        let problems = bundle.checked_values(&[("replicas".into(), "three".into())]).expect_err("a word");
        assert_eq!(
            problems,
            vec![ValueProblem {
                parameter: "replicas".into(),
                given: Some("three".into()),
                message: "parameter \"replicas\" expects a Integer".into()
            }]
        );
    }

    #[test]
    fn a_required_parameter_is_asked_for_once() {
        let template = "name: demo\nversion: 1.0.0\ndescription: d\ncategory: c\nparameters:\n  - name: label\n    pattern: \"[a-z]+\"\n    description: Lowercase.\n";
        let resources = "apiVersion: minicloud.dev/v1\nkind: Instance\nmetadata:\n  name: web\nspec:\n  image: x\n";
        let bundle = Bundle::parse("demo", template, resources, "x/demo").expect("bundle");
        let missing = bundle.checked_values(&[]).expect_err("required");
        assert_eq!(missing.len(), 1);
        assert_eq!(
            missing[0].to_string(),
            "--set label=VALUE: parameter \"label\" has no default: give it a value (Lowercase.)"
        );
        let wrong = bundle.checked_values(&[("label".into(), "ABC".into())]).expect_err("pattern");
        assert_eq!(wrong.len(), 1, "a wrong value is not also reported missing: {wrong:?}");
        assert!(wrong[0].message.contains("does not match the pattern"), "{wrong:?}");
    }

    #[test]
    fn bad_bundles_are_refused_with_their_position() {
        let resources = "apiVersion: minicloud.dev/v1\nkind: Instance\nmetadata:\n  name: web\nspec:\n  image: x\n";
        let error =
            Bundle::parse("demo", "name: demo\nversion: \"1.0\"\ndescription: d\ncategory: c\n", resources, "x/demo")
                .expect_err("version")
                .to_string();
        assert!(error.contains("not a semantic version"), "{error}");
        let error = Bundle::parse(
            "demo",
            "name: demo\nversion: 1.0.0\ndescription: d\ncategory: c\nparameters:\n  - name: n\n    tyep: String\n",
            resources,
            "x/demo",
        )
        .expect_err("typo")
        .to_string();
        assert!(error.starts_with("x/demo/template.yaml:7:5") && error.contains("tyep"), "{error}");
        let error =
            Bundle::parse("other", "name: demo\nversion: 1.0.0\ndescription: d\ncategory: c\n", resources, "x/other")
                .expect_err("name")
                .to_string();
        assert!(error.contains("directory name"), "{error}");
    }

    #[test]
    fn a_template_reference_is_filled_from_the_catalog() {
        let mut stack = json!({
            "apiVersion": "minicloud.dev/v1", "kind": "Stack", "metadata": {"name": "site"},
            "spec": {"templateRef": {"name": "static-site"}, "values": {"replicas": 3}}
        });
        expand(&mut stack).expect("expanded");
        assert!(stack["spec"]["resources"].as_array().is_some_and(|r| !r.is_empty()));
        assert!(stack["spec"]["templateRef"]["version"].is_string());
        let mut unknown = json!({"kind": "Stack", "spec": {"templateRef": {"name": "nope"}}});
        assert!(expand(&mut unknown).expect_err("unknown").contains("no template \"nope\""));
    }
}
