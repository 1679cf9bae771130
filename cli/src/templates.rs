//! `cloud templates list|show|render|install|vet`: the marketplace of Stack bundles (see
//! [`minicloud_model::templates`]). `render` prints the Stack manifest a bundle makes; `install` checks
//! every value first (unknown, missing or ill-typed: nothing is created) and applies it; `vet`
//! checks bundles before they ship.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use serde_json::{json, Value};

use super::output::{table, yaml};
use super::OutputFormat;
use minicloud_client::Client;
use minicloud_model::manifest;
use minicloud_model::templates::{self, Bundle};

/// What `cloud templates` does.
#[derive(Debug, Subcommand)]
pub enum TemplatesCommand {
    /// List the templates: shipped ones and those of --templates-dir / CLOUD_TEMPLATES.
    List {
        #[arg(short = 'o', long, value_enum)]
        output: Option<OutputFormat>,
    },
    /// Describe a template: its parameters, outputs, resources and notes.
    Show { name: String },
    /// Print the Stack manifest a template makes (apply it later with `cloud apply -f -`).
    Render {
        name: String,
        /// The stack's name.
        stack: String,
        /// A parameter value, KEY=VALUE; repeatable.
        #[arg(long = "set", value_parser = parse_setting)]
        set: Vec<(String, String)>,
        #[arg(short = 'n', long)]
        namespace: Option<String>,
    },
    /// Create (or update) a stack from a template; every value is checked first.
    Install {
        name: String,
        /// The stack's name.
        stack: String,
        /// A parameter value, KEY=VALUE; repeatable.
        #[arg(long = "set", value_parser = parse_setting)]
        set: Vec<(String, String)>,
        #[arg(short = 'n', long)]
        namespace: Option<String>,
    },
    /// Check bundles (a directory of bundle directories, or one bundle): files, parameters
    /// declared and used, and the stack each makes with its defaults.
    Vet { directory: PathBuf },
}

fn parse_setting(text: &str) -> Result<(String, String), String> {
    let (key, value) = text.split_once('=').ok_or_else(|| format!("{text:?}: write KEY=VALUE"))?;
    Ok((key.trim().to_owned(), value.to_owned()))
}

/// Runs `cloud templates ...`.
pub async fn run(client: &Client, command: TemplatesCommand) -> anyhow::Result<()> {
    match command {
        TemplatesCommand::Vet { directory } => vet(&directory),
        other => {
            let catalog = templates::catalog().map_err(anyhow::Error::msg)?;
            match other {
                TemplatesCommand::List { output } => list(&catalog.bundles, output),
                TemplatesCommand::Show { name } => show(catalog.get(&name, None)?),
                TemplatesCommand::Render { name, stack, set, namespace } => {
                    let manifest = rendered(catalog.get(&name, None)?, &stack, namespace.as_deref(), &set)?;
                    super::output::write_data(&yaml(&manifest, 0));
                    Ok(())
                }
                TemplatesCommand::Install { name, stack, set, namespace } => {
                    let bundle = catalog.get(&name, None)?;
                    let manifest = rendered(bundle, &stack, namespace.as_deref(), &set)?;
                    let answer = client.apply(vec![manifest], false).await?;
                    for item in &answer.items {
                        let action = format!("{:?}", item.action).to_ascii_lowercase();
                        say!(
                            "{}/{} {action} from template {} {}",
                            item.kind.to_ascii_lowercase(),
                            item.name,
                            bundle.name,
                            bundle.version
                        );
                    }
                    say!(
                        "follow it with `cloud describe stack {stack}`{}",
                        namespace.map(|n| format!(" -n {n}")).unwrap_or_default()
                    );
                    Ok(())
                }
                TemplatesCommand::Vet { .. } => unreachable!("handled above"),
            }
        }
    }
}

/// The Stack manifest of `bundle` with the settings, checked completely (values, then the
/// whole manifest as `cloud apply` would check it).
fn rendered(
    bundle: &Bundle,
    stack: &str,
    namespace: Option<&str>,
    settings: &[(String, String)],
) -> anyhow::Result<Value> {
    let values = bundle.values(settings)?;
    let manifest = bundle.render(stack, namespace, &values);
    if let Err(problems) = manifest::validate_value(manifest.clone()) {
        for problem in &problems {
            say_err!("{}: {}", problem.path, problem.message);
        }
        anyhow::bail!("{} problem(s) in the stack template {} makes; nothing was created", problems.len(), bundle.name);
    }
    Ok(manifest)
}

fn list(bundles: &[Bundle], output: Option<OutputFormat>) -> anyhow::Result<()> {
    match output {
        Some(OutputFormat::Name) => {
            for bundle in bundles {
                say!("{}", bundle.name);
            }
        }
        Some(OutputFormat::Json) | Some(OutputFormat::Yaml) => {
            let listed: Vec<Value> = bundles
                .iter()
                .map(|b| {
                    json!({
                        "name": b.name, "version": b.version, "category": b.category,
                        "description": b.description, "source": b.source,
                        "parameters": b.parameters, "outputs": b.outputs,
                    })
                })
                .collect();
            if output == Some(OutputFormat::Json) {
                super::output::write_data(&format!("{}\n", serde_json::to_string_pretty(&listed)?));
            } else {
                super::output::write_data(&yaml(&Value::Array(listed), 0));
            }
        }
        Some(OutputFormat::Wide) | None => {
            let wide = output == Some(OutputFormat::Wide);
            let mut headers = vec!["NAME", "VERSION", "CATEGORY", "DESCRIPTION"];
            if wide {
                headers.extend(["PARAMETERS", "SOURCE"]);
            }
            let rows: Vec<Vec<String>> = bundles
                .iter()
                .map(|b| {
                    let mut row = vec![b.name.clone(), b.version.clone(), b.category.clone(), b.description.clone()];
                    if wide {
                        row.push(b.parameters.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(","));
                        row.push(b.source.clone());
                    }
                    row
                })
                .collect();
            show!("{}", table(&headers, &rows));
        }
    }
    Ok(())
}

fn show(bundle: &Bundle) -> anyhow::Result<()> {
    say!("Name:         {}", bundle.name);
    say!("Version:      {}", bundle.version);
    say!("Category:     {}", bundle.category);
    say!("Description:  {}", bundle.description);
    say!("Source:       {}", bundle.source);
    say!("Parameters:");
    let rows: Vec<Vec<String>> = bundle
        .parameters
        .iter()
        .map(|p| {
            let default = match (&p.default, &p.generate, p.secret) {
                (_, Some(generate), _) => format!("(generated: {} characters)", generate.password),
                (Some(value), _, _) => value.to_string(),
                (None, None, _) => "(required)".into(),
            };
            let kind = if p.secret { format!("{:?}, secret", p.type_) } else { format!("{:?}", p.type_) };
            vec![p.name.clone(), kind, default, p.description.clone().unwrap_or_default()]
        })
        .collect();
    for line in table(&["NAME", "TYPE", "DEFAULT", "DESCRIPTION"], &rows).lines() {
        say!("  {line}");
    }
    say!("Outputs:");
    for output in &bundle.outputs {
        say!("  {}: {}", output.name, output.description.clone().unwrap_or_else(|| output.value.clone()));
    }
    say!("Resources:");
    for resource in &bundle.resources {
        say!("  {}/{}", resource.kind.to_ascii_lowercase(), resource.metadata.name);
    }
    if !bundle.notes.trim().is_empty() {
        say!("Notes:");
        for line in bundle.notes.trim_end().lines() {
            say!("  {line}");
        }
    }
    say!("Install: cloud templates install {} STACK [--set KEY=VALUE ...]", bundle.name);
    Ok(())
}

/// Checks every bundle under `directory` (or the bundle `directory` is); prints one line per
/// bundle and every problem.
fn vet(directory: &Path) -> anyhow::Result<()> {
    let bundles: Vec<PathBuf> = if directory.join("template.yaml").is_file() {
        vec![directory.to_path_buf()]
    } else {
        let mut found: Vec<PathBuf> = std::fs::read_dir(directory)
            .map_err(|error| anyhow::anyhow!("cannot read {}: {error}", directory.display()))?
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| path.is_dir())
            .collect();
        found.sort();
        found
    };
    if bundles.is_empty() {
        anyhow::bail!("{} holds no bundle (a directory with template.yaml and resources.yaml)", directory.display());
    }
    let mut failed = 0;
    for path in &bundles {
        let problems = vet_one(path);
        if problems.is_empty() {
            say!("{}: ok", path.display());
        } else {
            failed += 1;
            say!("{}: {} problem(s)", path.display(), problems.len());
            for problem in problems {
                say!("  {problem}");
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} bundle(s) have problems", bundles.len());
    }
    Ok(())
}

/// The keys read from the Secret `secret` (`secretKeyRef`) anywhere in `value`.
fn secret_keys_read(value: &Value, secret: &str, out: &mut std::collections::BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            if let Some(reference) = map.get("secretKeyRef") {
                if reference.get("name").and_then(Value::as_str) == Some(secret) {
                    if let Some(key) = reference.get("key").and_then(Value::as_str) {
                        out.insert(key.to_owned());
                    }
                }
            }
            map.values().for_each(|item| secret_keys_read(item, secret, out));
        }
        Value::Array(items) => items.iter().for_each(|item| secret_keys_read(item, secret, out)),
        _ => {}
    }
}

/// The problems of one bundle.
fn vet_one(path: &Path) -> Vec<String> {
    let bundle = match Bundle::read(path) {
        Ok(bundle) => bundle,
        Err(error) => return vec![error.to_string()],
    };
    let mut problems = Vec::new();
    // Every parameter a reference names is declared, and every declared one is used.
    let mut used = std::collections::BTreeSet::new();
    let values: Vec<Value> = bundle.resources.iter().map(|r| serde_json::to_value(r).unwrap_or_default()).collect();
    let mut found = Vec::new();
    for value in &values {
        minicloud_crds::stack::references_in(value, String::new(), &mut found);
    }
    let outputs: Vec<(String, &str)> = bundle
        .outputs
        .iter()
        .flat_map(|o| {
            minicloud_crds::stack::references(&o.value).into_iter().map(|r| (format!("outputs.{}", o.name), r))
        })
        .collect();
    found.extend(outputs);
    for (_, reference) in &found {
        if let minicloud_crds::stack::Reference::Parameter(name) = minicloud_crds::stack::Reference::parse(reference) {
            if name != "stack.name" {
                used.insert(name.to_owned());
            }
        }
    }
    // Secret parameters are read from the stack's Secret (`secretKeyRef` to `STACK-params`).
    let parameters_secret = minicloud_crds::stack::parameters_secret_name(minicloud_crds::stack::STACK_NAME_REFERENCE);
    for value in &values {
        secret_keys_read(value, &parameters_secret, &mut used);
    }
    for parameter in &bundle.parameters {
        if !used.contains(&parameter.name) {
            problems.push(format!("parameter {:?} is declared but no resource or output uses it", parameter.name));
        }
    }
    // The stack it makes with its defaults (required parameters get a value of their type).
    let mut settings = Vec::new();
    for parameter in &bundle.parameters {
        if parameter.default.is_none() && parameter.generate.is_none() {
            let example = match parameter.type_ {
                minicloud_crds::stack::ParameterType::String => "example",
                minicloud_crds::stack::ParameterType::Boolean => "true",
                _ => "1",
            };
            settings.push((parameter.name.clone(), example.to_owned()));
        }
    }
    match bundle.values(&settings) {
        Err(error) => problems.push(error.to_string()),
        Ok(values) => {
            let manifest = bundle.render("vet", None, &values);
            if let Err(found) = manifest::validate_value(manifest) {
                problems.extend(found.into_iter().map(|problem| format!("{}: {}", problem.path, problem.message)));
            }
        }
    }
    problems
}
