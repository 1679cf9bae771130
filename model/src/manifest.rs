//! Manifests: reading multi-document YAML from files, directories and stdin, and validating
//! every document completely (YAML syntax, the kind's JSON Schema, typed decoding, semantic
//! rules, references between documents) before anything is written anywhere.
//!
//! Every problem becomes a [`Diagnostic`] printed as `file:line:col: field.path: message`,
//! pointing at the offending key or value. All diagnostics of a batch are reported at once; a
//! batch with any diagnostic yields no objects, so nothing is ever half-applied.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use jsonschema::error::ValidationErrorKind;
use jsonschema::paths::LocationSegment;
use jsonschema::{ValidationError, Validator};
use minicloud_crds::validation::{validate_metadata, validate_object};
use minicloud_crds::{FieldPath, Kind, Object, ObjectKey, ObjectMeta, PathSegment, TypedObject};
use serde_json::Value;

use crate::yaml::{self, Position, SpanIndex};

/// Largest manifest file accepted.
pub(crate) const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// One problem, located as precisely as is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// File name (`<stdin>` for standard input).
    pub file: String,
    /// Line and column, when the problem is inside the file.
    pub position: Option<Position>,
    /// The field concerned, when there is one.
    pub path: Option<FieldPath>,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(position) = self.position {
            write!(f, ":{}:{}", position.line, position.column)?;
        }
        if let Some(path) = self.path.as_ref().filter(|path| !path.is_root()) {
            write!(f, ": {path}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The module's error: the complete list of problems found in a batch.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{} problem(s) found:\n{}", .0.len(), render(.0))]
    Invalid(Vec<Diagnostic>),
}

fn render(diagnostics: &[Diagnostic]) -> String {
    diagnostics.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
}

/// A manifest text and where it came from.
#[derive(Clone, Debug)]
pub struct Source {
    pub name: String,
    pub text: String,
}

/// One validated object and where it was declared.
#[derive(Clone, Debug)]
pub struct Manifest {
    pub file: Arc<str>,
    pub position: Position,
    pub object: TypedObject,
    /// Positions of the document's keys and values, for errors found after parsing.
    pub spans: Arc<SpanIndex>,
}

impl Manifest {
    /// The object in its generic form (defaults applied), ready for the store.
    pub fn to_object(&self) -> Result<Object, minicloud_crds::object::ObjectError> {
        Object::from_typed(&self.object)
    }

    /// Kind, namespace and name.
    pub fn key(&self) -> ObjectKey {
        let meta = self.object.metadata();
        ObjectKey::new(self.object.kind(), meta.namespace_or_default(), meta.name.clone())
    }
}

/// Reads manifests from paths: files, directories (their `.yaml`, `.yml` and `.json` files;
/// subdirectories too when `recursive`; hidden files and directories skipped) and `-` for
/// standard input.
pub fn read_sources(paths: &[PathBuf], recursive: bool) -> Result<Vec<Source>, ManifestError> {
    let mut sources = Vec::new();
    let mut problems = Vec::new();
    for path in paths {
        if path.as_os_str() == "-" {
            let mut text = String::new();
            match std::io::stdin().take(MAX_FILE_BYTES + 1).read_to_string(&mut text) {
                Ok(_) if text.len() as u64 > MAX_FILE_BYTES => problems.push(too_large("<stdin>")),
                Ok(_) => sources.push(Source { name: "<stdin>".into(), text }),
                Err(error) => problems.push(file_problem("<stdin>", format!("cannot read standard input: {error}"))),
            }
        } else if path.is_dir() {
            let before = sources.len();
            read_directory(path, recursive, &mut Visited::default(), &mut sources, &mut problems);
            if sources.len() == before && problems.is_empty() {
                let hint = if recursive { "" } else { " (add -R to include subdirectories)" };
                problems.push(file_problem(
                    &path.display().to_string(),
                    format!("no .yaml, .yml or .json files found{hint}"),
                ));
            }
        } else {
            read_file(path, &mut sources, &mut problems);
        }
    }
    if problems.is_empty() {
        Ok(sources)
    } else {
        Err(ManifestError::Invalid(problems))
    }
}

fn file_problem(file: &str, message: String) -> Diagnostic {
    Diagnostic { file: file.into(), position: None, path: None, message }
}

fn too_large(file: &str) -> Diagnostic {
    file_problem(file, format!("file is larger than {} MiB; split it into smaller files", MAX_FILE_BYTES >> 20))
}

/// The directories read so far, by device and inode, so that a symbolic link back to a
/// directory already read (a loop, or a second path to the same files) is reported instead of
/// read again: reading stays linear in the number of directories.
#[derive(Default)]
struct Visited(std::collections::HashMap<(u64, u64), PathBuf>);

impl Visited {
    /// Records `directory`; the path it was first read under when it was read already.
    fn first_visit(&mut self, directory: &Path) -> std::io::Result<Result<(), PathBuf>> {
        use std::os::unix::fs::MetadataExt;
        let metadata = std::fs::metadata(directory)?;
        match self.0.entry((metadata.dev(), metadata.ino())) {
            std::collections::hash_map::Entry::Occupied(first) => Ok(Err(first.get().clone())),
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(directory.to_owned());
                Ok(Ok(()))
            }
        }
    }
}

fn read_directory(
    directory: &Path,
    recursive: bool,
    visited: &mut Visited,
    sources: &mut Vec<Source>,
    problems: &mut Vec<Diagnostic>,
) {
    let name = directory.display().to_string();
    match visited.first_visit(directory) {
        Ok(Ok(())) => {}
        Ok(Err(first)) => {
            problems.push(file_problem(
                &name,
                format!(
                    "is the directory {} again (a symbolic link loop or a second link to it); remove the link",
                    first.display()
                ),
            ));
            return;
        }
        Err(error) => {
            problems.push(file_problem(&name, format!("cannot read directory: {error}")));
            return;
        }
    }
    let entries = match std::fs::read_dir(directory) {
        Ok(entries) => entries,
        Err(error) => {
            problems.push(file_problem(&name, format!("cannot read directory: {error}")));
            return;
        }
    };
    // Hidden entries (`.git`, `.github/workflows/*.yml`, an editor's `.x.yaml.swp`) are not
    // manifests.
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok())
        .filter(|entry| !entry.file_name().to_string_lossy().starts_with('.'))
        .map(|entry| entry.path())
        .collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            if recursive {
                read_directory(&path, recursive, visited, sources, problems);
            }
        } else if path
            .extension()
            .and_then(|extension| extension.to_str())
            .is_some_and(|extension| matches!(extension, "yaml" | "yml" | "json"))
        {
            // A pipe or a device found in a directory would block the read (a pipe without a
            // writer never opens); named on the command line (`-f <(...)`) they are read.
            if path.metadata().is_ok_and(|metadata| !metadata.is_file()) {
                problems.push(file_problem(
                    &path.display().to_string(),
                    "is not a regular file (a pipe, socket or device); remove it or name it with -f".into(),
                ));
            } else {
                read_file(&path, sources, problems);
            }
        }
    }
}

/// Reads one file, never more than [`MAX_FILE_BYTES`] + 1 bytes whatever size the file
/// reports (`/dev/zero`, a growing file or a pipe report none or a wrong one).
fn read_file(path: &Path, sources: &mut Vec<Source>, problems: &mut Vec<Diagnostic>) {
    let name = path.display().to_string();
    let mut bytes = Vec::new();
    let read = std::fs::File::open(path).and_then(|file| file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes));
    match read {
        Err(error) => problems.push(file_problem(&name, format!("cannot read: {error}"))),
        Ok(_) if bytes.len() as u64 > MAX_FILE_BYTES => problems.push(too_large(&name)),
        Ok(_) => match String::from_utf8(bytes) {
            Ok(text) => sources.push(Source { name, text }),
            Err(_) => problems.push(file_problem(&name, "file is not UTF-8 text".into())),
        },
    }
}

/// Parses and validates every document of every source. Returns the objects only when no
/// document has any problem.
pub fn parse_sources(sources: &[Source]) -> Result<Vec<Manifest>, ManifestError> {
    let mut manifests = Vec::new();
    let mut problems = Vec::new();
    for source in sources {
        let file: Arc<str> = Arc::from(source.name.as_str());
        let documents = match yaml::parse_documents(&source.text) {
            Ok(documents) => documents,
            Err(error) => {
                problems.push(Diagnostic {
                    file: source.name.clone(),
                    position: Some(error.position),
                    path: None,
                    message: error.message,
                });
                continue;
            }
        };
        for document in documents {
            let locator = Locator { spans: &document.spans, prefix: FieldPath::root() };
            match check_document(document.value, &locator) {
                Ok(object) => manifests.push(Manifest {
                    file: file.clone(),
                    position: document.position,
                    object,
                    spans: Arc::new(document.spans),
                }),
                Err(located) => problems.extend(located.into_iter().map(|problem| Diagnostic {
                    file: source.name.clone(),
                    position: Some(problem.position.unwrap_or(document.position)),
                    path: Some(problem.path),
                    message: problem.message,
                })),
            }
        }
    }
    problems.extend(check_references(&manifests));
    let order: HashMap<&str, usize> =
        sources.iter().enumerate().map(|(index, source)| (source.name.as_str(), index)).collect();
    problems.sort_by_key(|problem| (order.get(problem.file.as_str()).copied(), problem.position));
    if problems.is_empty() {
        Ok(manifests)
    } else {
        Err(ManifestError::Invalid(problems))
    }
}

/// Validates one object given as JSON (as the API receives it): the same checks as for a
/// manifest, reported by field path since there is no text to point into.
pub fn validate_value(value: Value) -> Result<TypedObject, Vec<minicloud_crds::FieldError>> {
    let spans = SpanIndex::default();
    let locator = Locator { spans: &spans, prefix: FieldPath::root() };
    check_document(value, &locator).map_err(|problems| {
        problems.into_iter().map(|problem| minicloud_crds::FieldError::new(problem.path, problem.message)).collect()
    })
}

/// Reads and validates in one step.
pub fn load(paths: &[PathBuf], recursive: bool) -> Result<Vec<Manifest>, ManifestError> {
    parse_sources(&read_sources(paths, recursive)?)
}

struct Located {
    path: FieldPath,
    position: Option<Position>,
    message: String,
}

/// Finds positions for paths of a document that may sit inside another one (a Stack's
/// resource is checked as a document of its own, located under `spec.resources[i]`).
struct Locator<'s> {
    spans: &'s SpanIndex,
    prefix: FieldPath,
}

impl Locator<'_> {
    fn full(&self, path: &FieldPath) -> FieldPath {
        FieldPath(self.prefix.0.iter().chain(&path.0).cloned().collect())
    }

    fn value_position(&self, path: &FieldPath) -> Option<Position> {
        self.spans.value_position(&self.full(path))
    }

    fn key_position(&self, path: &FieldPath) -> Option<Position> {
        self.spans.key_position(&self.full(path))
    }
}

/// Checks one document; problems carry full paths (prefix included).
fn check_document(mut value: Value, locator: &Locator<'_>) -> Result<TypedObject, Vec<Located>> {
    let root = FieldPath::root();
    // A Stack made from a template gets the template's resources before anything is checked.
    if let Err(message) = crate::templates::expand(&mut value) {
        let path = root.key("spec").key("templateRef").key("name");
        return Err(vec![Located { position: locator.value_position(&path), path: locator.full(&path), message }]);
    }
    let at_value = |path: FieldPath, message: String| Located {
        position: locator.value_position(&path),
        path: locator.full(&path),
        message,
    };
    let Some(document) = value.as_object() else {
        return Err(vec![at_value(
            root,
            "a manifest must be a mapping with apiVersion, kind, metadata and spec".into(),
        )]);
    };
    let kind_path = root.key("kind");
    let kind = match document.get("kind") {
        None => {
            return Err(vec![Located {
                position: locator.value_position(&root),
                path: locator.full(&kind_path),
                message: format!("missing required field `kind`; one of {}", known_kinds()),
            }])
        }
        Some(Value::String(name)) => match Kind::from_kind_name(name) {
            Some(kind) => kind,
            None => {
                let suggestion = Kind::ALL
                    .into_iter()
                    .find(|kind| kind.as_str().eq_ignore_ascii_case(name))
                    .map(|kind| format!(" (did you mean {kind}?)"))
                    .unwrap_or_default();
                return Err(vec![at_value(
                    kind_path,
                    format!("unknown kind {name:?}{suggestion}; known kinds: {}", known_kinds()),
                )]);
            }
        },
        Some(other) => return Err(vec![at_value(kind_path, format!("kind must be a string, got {other}"))]),
    };
    let mut schema_errors = schema_problems(kind, &value, locator);
    if !schema_errors.is_empty() {
        // Report name and label problems too, when the metadata itself decodes.
        if let Some(meta) =
            value.get("metadata").and_then(|meta| serde_json::from_value::<ObjectMeta>(meta.clone()).ok())
        {
            schema_errors.extend(validate_metadata(&meta).into_iter().map(|error| at_value(error.path, error.message)));
            schema_errors.sort_by_key(|problem| problem.position);
        }
        return Err(schema_errors);
    }
    let object = TypedObject::from_value(kind, value).map_err(|error| vec![at_value(error.path, error.message)])?;
    let mut problems: Vec<Located> =
        validate_object(&object).into_iter().map(|error| at_value(error.path, error.message)).collect();
    problems.extend(check_stack_resources(&object, locator));
    if problems.is_empty() {
        Ok(object)
    } else {
        Err(problems)
    }
}

/// Renders each resource of a self-contained Stack with its parameter values and checks it
/// as a document of its own kind.
fn check_stack_resources(object: &TypedObject, locator: &Locator<'_>) -> Vec<Located> {
    let TypedObject::Stack(stack) = object else { return Vec::new() };
    let spec = stack.spec.with_stack_name(&stack.metadata.name);
    let parameters = spec.parameter_values();
    let mut problems = Vec::new();
    for (index, resource) in spec.resources.iter().enumerate() {
        if Kind::from_kind_name(&resource.kind).is_none_or(|kind| kind == Kind::Stack) {
            continue; // already reported by the Stack's own rules
        }
        if !resource.included(&parameters) {
            continue; // not part of the stack with these values (`when`)
        }
        let path = FieldPath::root().key("spec").key("resources").index(index);
        let rendered = match resource.render(&parameters, stack.metadata.namespace_or_default()) {
            Ok(rendered) => rendered,
            Err(error) => {
                problems.push(Located {
                    position: locator.value_position(&path),
                    path: locator.full(&path),
                    message: error.to_string(),
                });
                continue;
            }
        };
        let prefix = locator.full(&path);
        // Fields that still hold references (to other resources' status, or to a value that
        // is generated later) are checked when the stack controller renders them.
        let mut unresolved = Vec::new();
        minicloud_crds::stack::references_in(&rendered, String::new(), &mut unresolved);
        let unresolved: Vec<String> = unresolved
            .into_iter()
            .map(|(at, _)| format!("{prefix}.{at}"))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if let Err(found) = check_document(rendered, &Locator { spans: locator.spans, prefix }) {
            problems.extend(found.into_iter().filter(|problem| {
                let at = problem.path.to_string();
                !unresolved.iter().any(|field| {
                    at == *field || at.starts_with(&format!("{field}.")) || at.starts_with(&format!("{field}["))
                })
            }));
        }
    }
    problems
}

fn known_kinds() -> String {
    Kind::ALL.map(Kind::as_str).join(", ")
}

/// Each kind's schema and its compiled validator, built once per process.
fn schema(kind: Kind) -> &'static (Value, Validator) {
    static SCHEMAS: OnceLock<HashMap<Kind, (Value, Validator)>> = OnceLock::new();
    let schemas = SCHEMAS.get_or_init(|| {
        Kind::ALL
            .into_iter()
            .map(|kind| {
                let schema = kind.schema();
                // The schemas are generated from our own types; failing to compile one is a bug.
                let validator = jsonschema::draft7::new(&schema).expect("generated schema compiles");
                (kind, (schema, validator))
            })
            .collect()
    });
    &schemas[&kind]
}

fn schema_problems(kind: Kind, value: &Value, locator: &Locator<'_>) -> Vec<Located> {
    let (schema, validator) = schema(kind);
    let mut problems = Vec::new();
    for error in validator.iter_errors(value) {
        describe_schema_error(&error, schema, locator, &mut problems);
    }
    problems.sort_by_key(|problem| problem.position);
    problems.dedup_by(|a, b| a.path == b.path && a.message == b.message);
    problems.into_iter().map(|problem| Located { path: locator.full(&problem.path), ..problem }).collect()
}

fn instance_path(error: &ValidationError<'_>) -> FieldPath {
    FieldPath(
        error
            .instance_path()
            .iter()
            .map(|segment| match segment {
                LocationSegment::Property(key) => PathSegment::Key(key.to_string()),
                LocationSegment::Index(index) => PathSegment::Index(index),
            })
            .collect(),
    )
}

fn describe_schema_error(error: &ValidationError<'_>, schema: &Value, locator: &Locator<'_>, out: &mut Vec<Located>) {
    let path = instance_path(error);
    match error.kind() {
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            let known = allowed_fields(schema, &path);
            for field in unexpected {
                let field_path = path.key(field);
                let hint = match closest(field, &known) {
                    Some(candidate) => format!("; did you mean `{candidate}`?"),
                    None if known.is_empty() => String::new(),
                    None => format!("; known fields: {}", known.join(", ")),
                };
                out.push(Located {
                    position: locator.key_position(&field_path),
                    path: field_path,
                    message: format!("unknown field `{field}`{hint}"),
                });
            }
        }
        ValidationErrorKind::Required { property } => {
            let name = property.as_str().map_or_else(|| property.to_string(), str::to_owned);
            let field = path.key(&name);
            out.push(Located {
                position: locator.key_position(&field),
                path: field,
                message: "required field is missing".into(),
            });
        }
        ValidationErrorKind::AnyOf { context } | ValidationErrorKind::OneOfNotValid { context } => {
            // Optional fields are `anyOf: [T, null]`: report why the value is not a valid T
            // rather than "not valid under any of the schemas".
            let relevant: Vec<&Vec<ValidationError<'static>>> =
                context.iter().filter(|branch| !branch.iter().any(|inner| is_null_type_error(inner, &path))).collect();
            let allowed: Vec<String> = context
                .iter()
                .filter_map(|branch| match branch.as_slice() {
                    [only] => match only.kind() {
                        ValidationErrorKind::Constant { expected_value } => Some(expected_value.to_string()),
                        _ => None,
                    },
                    _ => None,
                })
                .collect();
            if !allowed.is_empty() && allowed.len() == context.len() {
                let got = error.instance().to_string();
                out.push(Located {
                    position: locator.value_position(&path),
                    path: path.clone(),
                    message: format!("{got} is not one of {}", allowed.join(", ")),
                });
            } else if relevant.len() == 1 && !relevant[0].is_empty() {
                for inner in relevant[0] {
                    describe_schema_error(inner, schema, locator, out);
                }
            } else {
                out.push(Located {
                    position: locator.value_position(&path),
                    path: path.clone(),
                    message: error.to_string(),
                });
            }
        }
        _ => out.push(Located {
            position: locator.value_position(&path),
            path: path.clone(),
            message: error.to_string(),
        }),
    }
}

fn is_null_type_error(error: &ValidationError<'_>, path: &FieldPath) -> bool {
    matches!(error.kind(), ValidationErrorKind::Type { .. })
        && instance_path(error) == *path
        && error.to_string().contains("null")
}

/// The property names the schema allows at `path`, for "did you mean" hints.
fn allowed_fields(schema: &Value, path: &FieldPath) -> Vec<String> {
    minicloud_crds::kinds::schema_at(schema, path)
        .and_then(|node| node.get("properties"))
        .and_then(Value::as_object)
        .map(|properties| properties.keys().cloned().collect())
        .unwrap_or_default()
}

/// The known name closest to `field`, when it is close enough to be a typo.
fn closest<'k>(field: &str, known: &'k [String]) -> Option<&'k str> {
    known
        .iter()
        .map(|candidate| (edit_distance(&field.to_ascii_lowercase(), &candidate.to_ascii_lowercase()), candidate))
        .filter(|(distance, candidate)| *distance <= 2.max(candidate.len() / 4))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate.as_str())
}

/// Optimal string alignment distance (Levenshtein with adjacent transpositions).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (rows[i - 1][j] + 1).min(rows[i][j - 1] + 1).min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

/// Checks between documents: no object declared twice, and Secret keys that Instances
/// reference exist when the Secret is part of the same batch.
fn check_references(manifests: &[Manifest]) -> Vec<Diagnostic> {
    let mut problems = Vec::new();
    let mut seen: HashMap<ObjectKey, &Manifest> = HashMap::new();
    for manifest in manifests {
        if let Some(first) = seen.get(&manifest.key()) {
            let path = FieldPath::parse("metadata.name");
            problems.push(Diagnostic {
                file: manifest.file.to_string(),
                position: manifest.spans.value_position(&path).or(Some(manifest.position)),
                path: Some(path),
                message: format!(
                    "{} is declared twice (first at {}:{}:{}); each object may appear once per batch",
                    manifest.key(),
                    first.file,
                    first.position.line,
                    first.position.column
                ),
            });
        } else {
            seen.insert(manifest.key(), manifest);
        }
    }
    let mut secrets: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for manifest in manifests {
        if let TypedObject::Secret(secret) = &manifest.object {
            let key = (secret.metadata.namespace_or_default().to_owned(), secret.metadata.name.clone());
            secrets.entry(key).or_insert_with(|| secret.spec.string_data.keys().cloned().collect());
        }
    }
    for manifest in manifests {
        let namespace = manifest.object.metadata().namespace_or_default().to_owned();
        let (spec, base) = match &manifest.object {
            TypedObject::Instance(instance) => (&instance.spec, FieldPath::parse("spec")),
            TypedObject::ScalingGroup(group) => (&group.spec.template.spec, FieldPath::parse("spec.template.spec")),
            _ => continue,
        };
        for (index, var) in spec.env.iter().enumerate() {
            let Some(source) = &var.value_from else { continue };
            let reference = &source.secret_key_ref;
            if let Some(keys) = secrets.get(&(namespace.clone(), reference.name.clone())) {
                if !keys.contains(&reference.key) {
                    let path = base.key("env").index(index).key("valueFrom").key("secretKeyRef").key("key");
                    let known = if keys.is_empty() {
                        "it has none".to_owned()
                    } else {
                        format!("its keys are: {}", keys.join(", "))
                    };
                    problems.push(Diagnostic {
                        file: manifest.file.to_string(),
                        position: manifest.spans.value_position(&path).or(Some(manifest.position)),
                        path: Some(path),
                        message: format!("secret/{} has no key {:?}; {known}", reference.name, reference.key),
                    });
                }
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diagnostics(text: &str) -> Vec<String> {
        let sources = [Source { name: "m.yaml".into(), text: text.into() }];
        match parse_sources(&sources) {
            Ok(_) => Vec::new(),
            Err(ManifestError::Invalid(problems)) => problems.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn typo_points_at_the_key_and_suggests() {
        let text = "apiVersion: minicloud.dev/v1\nkind: Instance\nmetadata:\n  name: web\nspec:\n  imgae: x\n";
        let problems = diagnostics(text);
        assert!(
            problems.contains(&"m.yaml:6:3: spec.imgae: unknown field `imgae`; did you mean `image`?".to_string()),
            "{problems:?}"
        );
        assert!(problems.iter().any(|p| p == "m.yaml:5:1: spec.image: required field is missing"), "{problems:?}");
    }

    #[test]
    fn nested_optional_errors_are_reported_where_they_are() {
        let text = "apiVersion: minicloud.dev/v1\nkind: Instance\nmetadata:\n  name: web\nspec:\n  image: x\n  resources:\n    cpu: [1]\n";
        let problems = diagnostics(text);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("m.yaml:8:10: spec.resources.cpu: "), "{problems:?}");
    }

    #[test]
    fn semantic_errors_have_positions() {
        let text = "apiVersion: minicloud.dev/v1\nkind: ScalingGroup\nmetadata:\n  name: Web\nspec:\n  minReplicas: 3\n  maxReplicas: 2\n  template:\n    spec:\n      image: x\n";
        let problems = diagnostics(text);
        assert!(problems.iter().any(|p| p.starts_with("m.yaml:4:9: metadata.name: ")), "{problems:?}");
        assert!(
            problems.iter().any(|p| p.starts_with("m.yaml:6:16: spec.minReplicas: minReplicas (3)")),
            "{problems:?}"
        );
    }

    #[test]
    fn typos_are_recognised() {
        assert_eq!(closest("imgae", &["image".into(), "command".into()]), Some("image"));
        assert_eq!(closest("zzz", &["image".into()]), None);
    }
}
