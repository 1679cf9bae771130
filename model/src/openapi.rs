//! The OpenAPI 3.1 document of the API, generated from the resource types (their JSON Schemas)
//! and the route table. A copy is checked in at `docs/openapi.json` (regenerate with
//! `cargo run -q -- openapi > docs/openapi.json`); a test fails when it is stale.

use minicloud_crds::Kind;
use serde_json::{json, Map, Value};

const PREFIX: &str = "/apis/minicloud.dev/v1";

/// Rewrites draft-07 `#/definitions/X` references to OpenAPI's `#/components/schemas/X`.
fn rewrite_refs(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(reference)) = map.get_mut("$ref") {
                if let Some(name) = reference.strip_prefix("#/definitions/") {
                    *reference = format!("#/components/schemas/{name}");
                }
            }
            for child in map.values_mut() {
                rewrite_refs(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(rewrite_refs),
        _ => {}
    }
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn json_response(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

fn error_responses(codes: &[(&str, &str)]) -> Map<String, Value> {
    codes
        .iter()
        .map(|(code, description)| (code.to_string(), json_response(description, schema_ref("Error"))))
        .collect()
}

/// What any route that reads or writes the store may answer besides its own codes.
const STORE_UNAVAILABLE: (&str, &str) =
    ("503", "ServiceUnavailable: the store did not answer in time, or the server is shutting down; retry");
/// Invalid path segments or query parameters.
const BAD_REQUEST: (&str, &str) =
    ("400", "BadRequest: a namespace or name that is not a DNS-1123 label, or a bad query parameter");
/// What every request with a body may answer (see docs/api.md, \"Limits\").
const WRITE_REFUSALS: [(&str, &str); 4] = [
    ("403", "Forbidden: a cross-site browser request (Origin or Sec-Fetch-Site)"),
    ("408", "Timeout: the body did not arrive within the body-read timeout"),
    ("413", "RequestEntityTooLarge: the body exceeds 8 MiB or an object would exceed 1.5 MiB encoded"),
    ("415", "UnsupportedMediaType: the body was not sent in a type this operation reads (application/json; for PATCH a patch type)"),
];

/// Error responses: `codes`, then the write refusals when `writes`, then 503.
fn errors(codes: &[(&str, &str)], writes: bool) -> Map<String, Value> {
    let mut all: Vec<(&str, &str)> = codes.to_vec();
    if writes {
        all.extend(WRITE_REFUSALS);
    }
    all.push(STORE_UNAVAILABLE);
    error_responses(&all)
}

fn parameter(name: &str, location: &str, description: &str, schema: Value) -> Value {
    json!({"name": name, "in": location, "required": location == "path", "description": description, "schema": schema})
}

fn kind_paths(kind: Kind, paths: &mut Map<String, Value>) {
    let name = kind.as_str();
    let plural = kind.plural();
    let namespace = parameter("namespace", "path", "Namespace (a DNS-1123 label).", json!({"type": "string"}));
    let object_name = parameter("name", "path", "Object name (a DNS-1123 label).", json!({"type": "string"}));
    let list_parameters = json!([
        parameter(
            "labelSelector",
            "query",
            "Only objects whose labels match, e.g. `app=web,tier!=db`.",
            json!({"type": "string"})
        ),
        parameter("watch", "query", "Stream changes as JSON lines instead of listing.", json!({"type": "boolean"})),
        parameter(
            "resourceVersion",
            "query",
            "With watch: stream changes after this revision (otherwise the current objects come first, as ADDED).",
            json!({"type": "string"})
        ),
        parameter(
            "heartbeatSeconds",
            "query",
            "With watch: seconds between BOOKMARK heartbeats (1-300, default 10).",
            json!({"type": "integer"})
        ),
        parameter(
            "timeoutSeconds",
            "query",
            "With watch: end the stream after this many seconds (1-86400; default: never).",
            json!({"type": "integer"})
        ),
    ]);
    let list_response = {
        let mut responses = errors(
            &[
                ("400", "BadRequest: a bad selector, parameter or namespace, or a resourceVersion this server has not reached"),
                ("410", "Expired: the resourceVersion has been compacted; list again"),
                ("429", "TooManyRequests: the server's watch limit is reached; retry later"),
            ],
            false,
        );
        responses.insert(
            "200".into(),
            json!({
                "description": format!("{name} list, or with watch=true a stream of JSON lines {{type, object}}"),
                "content": {
                    "application/json": {"schema": schema_ref(&format!("{name}List"))},
                    "application/x-ndjson": {"schema": schema_ref("WatchEvent")}
                }
            }),
        );
        responses
    };
    paths.insert(
        format!("{PREFIX}/{plural}"),
        json!({"get": {
            "summary": format!("List or watch {plural} in every namespace"),
            "operationId": format!("list{name}AllNamespaces"),
            "parameters": list_parameters,
            "responses": list_response.clone(),
        }}),
    );
    let mut create_responses = errors(
        &[
            ("400", "BadRequest or Invalid: malformed or invalid object (every field problem in details.causes), or a bad namespace"),
            ("409", "AlreadyExists"),
            ("422", "Invalid: not allowed by the object lifecycle"),
        ],
        true,
    );
    create_responses.insert("201".into(), json_response("Created", schema_ref(name)));
    let mut list_all = list_parameters.as_array().cloned().unwrap_or_default();
    list_all.insert(0, namespace.clone());
    paths.insert(
        format!("{PREFIX}/namespaces/{{namespace}}/{plural}"),
        json!({
            "get": {
                "summary": format!("List or watch {plural} in a namespace"),
                "operationId": format!("list{name}"),
                "parameters": list_all,
                "responses": list_response,
            },
            "post": {
                "summary": format!("Create a {name}"),
                "operationId": format!("create{name}"),
                "parameters": [namespace.clone(), parameter("dryRun", "query", "All: validate and answer as if created, write nothing.", json!({"type": "string", "enum": ["All"]}))],
                "requestBody": {"required": true, "content": {"application/json": {"schema": schema_ref(name)}}},
                "responses": create_responses,
            }
        }),
    );
    let mut get_responses = errors(&[BAD_REQUEST, ("404", "NotFound")], false);
    get_responses.insert("200".into(), json_response("The object", schema_ref(name)));
    let mut put_responses = errors(
        &[
            ("400", "BadRequest or Invalid: malformed or invalid body, or a bad namespace or name"),
            ("404", "NotFound"),
            ("409", "Conflict: stale resourceVersion"),
            ("422", "Invalid: not allowed now (e.g. a finalizer added to an object being deleted)"),
        ],
        true,
    );
    put_responses.insert("200".into(), json_response("The object as stored", schema_ref(name)));
    let mut delete_responses = errors(
        &[
            ("400", "BadRequest: a bad namespace or name, or DeleteOptions that cannot be honoured (propagationPolicy Orphan, an unknown dry-run mode, contradicting options)"),
            ("403", "Forbidden: a cross-site browser request"),
            ("404", "NotFound"),
            ("409", "Conflict: a precondition (uid, resourceVersion) does not hold"),
        ],
        false,
    );
    let mut patch_responses = errors(
        &[
            ("400", "BadRequest or Invalid: a malformed patch, an operation that cannot be done, or a patched object that is invalid"),
            ("404", "NotFound"),
            ("409", "Conflict: the patch named a stale resourceVersion, or other writers kept changing the object"),
            ("422", "Invalid: not allowed now (e.g. a finalizer added to an object being deleted)"),
        ],
        true,
    );
    patch_responses.insert("200".into(), json_response("The object as stored", schema_ref(name)));
    let dry_run = parameter(
        "dryRun",
        "query",
        "All: validate and answer as if written, write nothing.",
        json!({"type": "string", "enum": ["All"]}),
    );
    delete_responses.insert("200".into(), json_response("Deleted: a Status of success", schema_ref("DeleteResult")));
    delete_responses
        .insert("202".into(), json_response("Terminating: finalizers still hold it; the object", schema_ref(name)));
    paths.insert(
        format!("{PREFIX}/namespaces/{{namespace}}/{plural}/{{name}}"),
        json!({
            "get": {"summary": format!("Read a {name}"), "operationId": format!("read{name}"), "parameters": [namespace.clone(), object_name.clone()], "responses": get_responses},
            "put": {
                "summary": format!("Replace a {name}'s spec and metadata (send metadata.resourceVersion for optimistic concurrency)"),
                "operationId": format!("replace{name}"),
                "parameters": [namespace.clone(), object_name.clone(), dry_run.clone()],
                "requestBody": {"required": true, "content": {"application/json": {"schema": schema_ref(name)}}},
                "responses": put_responses.clone(),
            },
            "patch": {
                "summary": format!("Patch a {name}: a JSON merge patch (RFC 7386) or a JSON patch (RFC 6902); application/apply-patch+yaml applies a whole manifest"),
                "operationId": format!("patch{name}"),
                "x-kubernetes-group-version-kind": {"group": minicloud_crds::API_GROUP, "version": "v1", "kind": name},
                "parameters": [
                    namespace.clone(),
                    object_name.clone(),
                    dry_run.clone(),
                    parameter("fieldManager", "query", "Who makes the change (recorded nowhere yet; accepted for Kubernetes clients).", json!({"type": "string"})),
                    parameter("fieldValidation", "query", "Unknown or invalid fields are always refused (Strict), whatever is asked.", json!({"type": "string", "enum": ["Strict", "Warn", "Ignore"]})),
                ],
                "requestBody": {"required": true, "content": {
                    "application/merge-patch+json": {"schema": {"type": "object"}},
                    "application/json-patch+json": {"schema": {"type": "array", "items": {"type": "object"}}}
                }},
                "responses": patch_responses,
            },
            "delete": {
                "summary": format!("Delete a {name} (DeleteOptions in the body or the query: dryRun, preconditions, propagationPolicy)"),
                "operationId": format!("delete{name}"),
                "parameters": [
                    namespace.clone(),
                    object_name.clone(),
                    dry_run.clone(),
                    parameter("resourceVersion", "query", "Delete only if the object is still at this version.", json!({"type": "string"})),
                    parameter("propagationPolicy", "query", "Background (what minicloud does) or Foreground (carried out as Background, with a Warning); Orphan is refused.", json!({"type": "string", "enum": ["Background", "Foreground", "Orphan"]})),
                    parameter("gracePeriodSeconds", "query", "Accepted; has no effect.", json!({"type": "integer"})),
                ],
                "requestBody": {"required": false, "content": {"application/json": {"schema": schema_ref("DeleteOptions")}}},
                "responses": delete_responses,
            }
        }),
    );
    paths.insert(
        format!("{PREFIX}/namespaces/{{namespace}}/{plural}/{{name}}/status"),
        json!({"put": {
            "summary": format!("Replace a {name}'s status (controllers)"),
            "operationId": format!("replace{name}Status"),
            "parameters": [namespace, object_name],
            "requestBody": {"required": true, "content": {"application/json": {"schema": schema_ref(name)}}},
            "responses": put_responses,
        }}),
    );
}

/// The `scale` subresource of ScalingGroups.
fn scale_paths(paths: &mut Map<String, Value>) {
    let namespace = parameter("namespace", "path", "A DNS-1123 label.", json!({"type": "string"}));
    let name = parameter("name", "path", "A DNS-1123 label.", json!({"type": "string"}));
    let dry_run = parameter(
        "dryRun",
        "query",
        "All: answer as if written, write nothing.",
        json!({"type": "string", "enum": ["All"]}),
    );
    let mut read = errors(&[BAD_REQUEST, ("404", "NotFound")], false);
    read.insert("200".into(), json_response("The group as a Scale", schema_ref("Scale")));
    let mut write = errors(
        &[
            (
                "400",
                "BadRequest or Invalid: not a Scale, replicas outside minReplicas..maxReplicas, another object's name",
            ),
            ("404", "NotFound"),
            ("409", "Conflict: the Scale named a stale resourceVersion"),
        ],
        true,
    );
    write.insert("200".into(), json_response("The group as a Scale, after the change", schema_ref("Scale")));
    paths.insert(
        format!("{PREFIX}/namespaces/{{namespace}}/scalinggroups/{{name}}/scale"),
        json!({
            "get": {"summary": "A ScalingGroup's desired and current counts as an autoscaling/v1 Scale", "operationId": "readScalingGroupScale", "parameters": [namespace.clone(), name.clone()], "responses": read},
            "put": {
                "summary": "Set a ScalingGroup's desired count (spec.replicas of a Scale)",
                "operationId": "replaceScalingGroupScale",
                "parameters": [namespace.clone(), name.clone(), dry_run.clone()],
                "requestBody": {"required": true, "content": {"application/json": {"schema": schema_ref("Scale")}}},
                "responses": write.clone(),
            },
            "patch": {
                "summary": "Patch a ScalingGroup's Scale (merge or JSON patch), e.g. {\"spec\": {\"replicas\": 3}}",
                "operationId": "patchScalingGroupScale",
                "parameters": [namespace, name, dry_run],
                "requestBody": {"required": true, "content": {
                    "application/merge-patch+json": {"schema": {"type": "object"}},
                    "application/json-patch+json": {"schema": {"type": "array", "items": {"type": "object"}}}
                }},
                "responses": write,
            }
        }),
    );
}

fn kind_schemas(kind: Kind, schemas: &mut Map<String, Value>) {
    let mut schema = kind.schema();
    rewrite_refs(&mut schema);
    if let Some(object) = schema.as_object_mut() {
        object.remove("$schema");
        object.remove("$id");
        if let Some(Value::Object(definitions)) = object.remove("definitions") {
            schemas.extend(definitions);
        }
    }
    // How Kubernetes clients (kubectl explain) find a kind's schema.
    schema["x-kubernetes-group-version-kind"] =
        json!([{"group": minicloud_crds::API_GROUP, "version": "v1", "kind": kind.as_str()}]);
    schemas.insert(kind.as_str().to_owned(), schema);
    schemas.insert(
        format!("{}List", kind.as_str()),
        json!({
            "type": "object",
            "required": ["apiVersion", "kind", "metadata", "items"],
            "properties": {
                "apiVersion": {"type": "string"},
                "kind": {"type": "string", "enum": [format!("{}List", kind.as_str())]},
                "metadata": {"type": "object", "properties": {"resourceVersion": {"type": "string", "description": "Revision the list was read at; watch from it."}}},
                "items": {"type": "array", "items": schema_ref(kind.as_str())}
            }
        }),
    );
}

/// The whole document.
pub fn document() -> Value {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for kind in Kind::ALL {
        kind_paths(kind, &mut paths);
        kind_schemas(kind, &mut schemas);
    }
    let mut apply_responses = errors(
        &[
            ("400", "BadRequest or Invalid: malformed or invalid batch (every problem in details.causes), or prune without an applyset; nothing was applied"),
            ("409", "Conflict or NotPossible: other writers kept changing an object (or the applyset) for every retry, or an object of the batch belongs to another applyset (details.causes names each); nothing was applied"),
            ("422", "Invalid: a write the object lifecycle refuses; nothing was applied"),
        ],
        true,
    );
    apply_responses.insert(
        "200".into(),
        json_response("What happened (or would happen) to each object", schema_ref("ApplyResult")),
    );
    paths.insert(
        format!("{PREFIX}/apply"),
        json!({"post": {
            "summary": "Create or update a batch of objects; the batch is validated completely first",
            "operationId": "apply",
            "parameters": [
                parameter("dryRun", "query", "Validate and report what would change without writing.", json!({"type": "boolean"})),
                parameter("applyset", "query", "Keep the inventory of this set of manifests (an ApplySet object).", json!({"type": "string"})),
                parameter("applysetNamespace", "query", "Namespace of the ApplySet object (default: default).", json!({"type": "string"})),
                parameter("prune", "query", "Delete members of the applyset that the batch no longer holds (needs applyset).", json!({"type": "boolean"})),
                parameter("pruneStateful", "query", "Prune databases too (they follow their deletion policy).", json!({"type": "boolean"}))
            ],
            "requestBody": {"required": true, "content": {"application/json": {"schema": schema_ref("ApplyRequest")}}},
            "responses": apply_responses,
        }}),
    );
    paths.insert(
        format!("{PREFIX}/namespaces/{{namespace}}/instances/{{name}}/log"),
        json!({"get": {
            "summary": "An Instance's container output (stdout and stderr)",
            "operationId": "readInstanceLog",
            "parameters": [
                parameter("namespace", "path", "Namespace.", json!({"type": "string"})),
                parameter("name", "path", "Instance name.", json!({"type": "string"})),
                parameter("follow", "query", "Keep the response open and stream new output.", json!({"type": "boolean"})),
                parameter("tailLines", "query", "Only the last N lines.", json!({"type": "integer"}))
            ],
            "responses": {
                "200": {"description": "The output", "content": {"text/plain": {"schema": {"type": "string"}}}},
                "400": json_response("BadRequest: a bad namespace, name or tailLines", schema_ref("Error")),
                "404": json_response("NotFound: no such Instance", schema_ref("Error")),
                "409": json_response("NotStarted: the Instance has no container yet", schema_ref("Error")),
                "503": json_response("ServiceUnavailable: no Docker engine, or the store did not answer", schema_ref("Error"))
            }
        }}),
    );
    let mut reveal_responses = errors(
        &[
            ("400", "BadRequest: a bad namespace or name, or a body without a key"),
            ("404", "NotFound: no such Secret, or no such key in it (the message lists its keys)"),
            ("500", "SecretUnreadable: the value is sealed with a key this server does not have"),
        ],
        true,
    );
    reveal_responses.insert(
        "200".into(),
        json_response(
            "The value",
            json!({"type": "object", "required": ["key", "value"], "properties": {"key": {"type": "string"}, "value": {"type": "string"}}}),
        ),
    );
    paths.insert(
        format!("{PREFIX}/namespaces/{{namespace}}/secrets/{{name}}/reveal"),
        json!({"post": {
            "summary": "One value of a Secret (every other answer redacts them); each reveal is logged, never the value",
            "operationId": "revealSecretValue",
            "parameters": [
                parameter("namespace", "path", "Namespace.", json!({"type": "string"})),
                parameter("name", "path", "Secret name.", json!({"type": "string"}))
            ],
            "requestBody": {"required": true, "content": {"application/json": {"schema": {
                "type": "object", "required": ["key"], "properties": {"key": {"type": "string"}}
            }}}},
            "responses": reveal_responses,
        }}),
    );
    let mut rotate_responses = errors(
        &[
            ("400", "BadRequest: the body is not JSON"),
            ("409", "NotPossible: the key comes from MINICLOUD_SECRET_KEY (rotate with a key file), or the store seals nothing"),
            ("500", "SecretUnreadable: a stored value is sealed with a key this server does not have"),
        ],
        true,
    );
    rotate_responses.insert(
        "200".into(),
        json_response(
            "The new key's id and the stored rows sealed again",
            json!({"type": "object", "required": ["key", "rewritten"], "properties": {"key": {"type": "string"}, "rewritten": {"type": "integer"}}}),
        ),
    );
    paths.insert(
        format!("{PREFIX}/secretkeys/rotate"),
        json!({"post": {
            "summary": "Seal every Secret value again under a new key; the key file then holds only the new key",
            "operationId": "rotateSecretKey",
            "responses": rotate_responses,
        }}),
    );
    paths.insert(
        format!("{PREFIX}/events"),
        json!({"get": {"summary": "Events in every namespace", "operationId": "listEventsAllNamespaces", "responses": {
            "200": json_response("Events, oldest first", schema_ref("EventList")),
            "503": json_response(STORE_UNAVAILABLE.1, schema_ref("Error"))
        }}}),
    );
    paths.insert(
        format!("{PREFIX}/namespaces/{{namespace}}/events"),
        json!({"get": {
            "summary": "Events of a namespace, or of one object",
            "operationId": "listEvents",
            "parameters": [
                parameter("namespace", "path", "Namespace.", json!({"type": "string"})),
                parameter("kind", "query", "With name: only this object's events.", json!({"type": "string"})),
                parameter("name", "query", "With kind: only this object's events.", json!({"type": "string"}))
            ],
            "responses": {
                "200": json_response("Events, oldest first", schema_ref("EventList")),
                "400": json_response("BadRequest: a bad namespace, an unknown kind, a bad name, or kind without name (or name without kind)", schema_ref("Error")),
                "503": json_response(STORE_UNAVAILABLE.1, schema_ref("Error"))
            }
        },
        "post": {
            "summary": "Record an event about an existing object of the namespace (a repeat raises its count); used by `cloud sync`",
            "operationId": "createEvent",
            "parameters": [parameter("namespace", "path", "Namespace.", json!({"type": "string"}))],
            "requestBody": {"required": true, "content": {"application/json": {"schema": schema_ref("NewEvent")}}},
            "responses": {
                "201": json_response("The event as recorded", schema_ref("Event")),
                "400": json_response("BadRequest: an unknown kind, a bad name, type, reason or a message over the limit", schema_ref("Error")),
                "404": json_response("NotFound: the object does not exist", schema_ref("Error")),
                "503": json_response(STORE_UNAVAILABLE.1, schema_ref("Error"))
            }
        }}),
    );
    access_paths(&mut paths, &mut schemas);
    scale_paths(&mut paths);
    let mut review = errors(&[BAD_REQUEST], true);
    review.insert(
        "201".into(),
        json_response("The review with status.allowed and status.reason", schema_ref("SelfSubjectAccessReview")),
    );
    paths.insert(
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews".into(),
        json!({"post": {
            "summary": "May the asking token do this? (kubectl auth can-i): decided from its role and namespace",
            "operationId": "createSelfSubjectAccessReview",
            "requestBody": {"required": true, "content": {"application/json": {"schema": schema_ref("SelfSubjectAccessReview")}}},
            "responses": review,
        }}),
    );
    schemas.insert(
        "SelfSubjectAccessReview".into(),
        json!({"type": "object", "required": ["spec"], "properties": {
            "apiVersion": {"type": "string"}, "kind": {"type": "string", "enum": ["SelfSubjectAccessReview"]},
            "spec": {"type": "object", "properties": {
                "resourceAttributes": {"type": "object", "properties": {
                    "namespace": {"type": "string"}, "verb": {"type": "string"}, "group": {"type": "string"},
                    "resource": {"type": "string"}, "subresource": {"type": "string"}, "name": {"type": "string"}
                }},
                "nonResourceAttributes": {"type": "object", "properties": {"path": {"type": "string"}, "verb": {"type": "string"}}}
            }},
            "status": {"type": "object", "properties": {"allowed": {"type": "boolean"}, "reason": {"type": "string"}}}
        }}),
    );
    schemas.insert(
        "Scale".into(),
        json!({"type": "object", "properties": {
            "apiVersion": {"type": "string", "enum": ["autoscaling/v1"]}, "kind": {"type": "string", "enum": ["Scale"]},
            "metadata": {"type": "object", "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}, "resourceVersion": {"type": "string"}}},
            "spec": {"type": "object", "required": ["replicas"], "properties": {"replicas": {"type": "integer", "minimum": 0}}},
            "status": {"type": "object", "properties": {"replicas": {"type": "integer"}, "selector": {"type": "string"}}}
        }}),
    );
    schemas.insert(
        "DeleteOptions".into(),
        json!({"type": "object", "description": "Kubernetes' DeleteOptions, as kubectl and client libraries send them.", "properties": {
            "kind": {"type": "string", "enum": ["DeleteOptions"]}, "apiVersion": {"type": "string"},
            "dryRun": {"type": "array", "items": {"type": "string", "enum": ["All"]}},
            "preconditions": {"type": "object", "properties": {"uid": {"type": "string"}, "resourceVersion": {"type": "string"}}},
            "propagationPolicy": {"type": "string", "enum": ["Background", "Foreground", "Orphan"]},
            "orphanDependents": {"type": "boolean"},
            "gracePeriodSeconds": {"type": "integer"}
        }}),
    );
    for (path, summary) in [("/healthz", "Liveness"), ("/version", "Server version and store backend")] {
        paths.insert(
            path.into(),
            json!({"get": {"summary": summary, "responses": {"200": json_response("OK", json!({"type": "object"}))}}}),
        );
    }
    paths.insert(
        "/metrics".into(),
        json!({"get": {"summary": "Prometheus metrics: reconciles, errors, durations and queue depth per kind; watch lag; API requests and latency by route and code; load balancer requests, responses and target health; scaling decisions; database backups and restores (docs/metrics.md)", "responses": {
            "200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}
        }}}),
    );
    paths.insert(
        "/readyz".into(),
        json!({"get": {"summary": "Readiness: the store answers within 2 s", "responses": {
            "200": json_response("Ready", json!({"type": "object"})),
            "503": json_response("Not ready: shutting down, or the store did not answer", schema_ref("Error"))
        }}}),
    );
    schemas.insert(
        "Error".into(),
        json!({
            "type": "object",
            "description": "A Kubernetes Status object (kind Status, status Failure).",
            "required": ["code", "reason", "message"],
            "properties": {
                "kind": {"type": "string", "enum": ["Status"]},
                "apiVersion": {"type": "string", "enum": ["v1"]},
                "metadata": {"type": "object"},
                "status": {"type": "string", "enum": ["Failure"]},
                "code": {"type": "integer", "description": "HTTP status code."},
                "reason": {"type": "string", "description": "CamelCase reason: BadRequest, Invalid, NotFound, AlreadyExists, Conflict, Expired, ..."},
                "message": {"type": "string", "description": "What went wrong and what to do."},
                "details": {"type": "object", "properties": {
                    "kind": {"type": "string"}, "name": {"type": "string"},
                    "causes": {"type": "array", "items": {"type": "object", "properties": {"field": {"type": "string"}, "message": {"type": "string"}, "reason": {"type": "string"}}}}
                }}
            }
        }),
    );
    schemas.insert(
        "WatchEvent".into(),
        json!({"type": "object", "required": ["type", "object"], "properties": {
            "type": {"type": "string", "enum": ["ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"]},
            "object": {"type": "object", "description": "The object after the change; for BOOKMARK only metadata.resourceVersion; for ERROR an Error."}
        }}),
    );
    schemas.insert(
        "DeleteResult".into(),
        json!({"type": "object", "description": "A Kubernetes Status of success.", "properties": {
            "kind": {"type": "string", "enum": ["Status"]},
            "apiVersion": {"type": "string"},
            "status": {"type": "string", "enum": ["Success"]},
            "reason": {"type": "string", "enum": ["Deleted"]},
            "details": {"type": "object"},
            "object": {"type": "object", "description": "The object as it was last."}
        }}),
    );
    schemas.insert(
        "ApplyRequest".into(),
        json!({"type": "object", "required": ["items"], "properties": {"items": {"type": "array", "items": {"type": "object", "description": "Any minicloud object."}}}}),
    );
    schemas.insert(
        "ApplyResult".into(),
        json!({"type": "object", "properties": {
            "dryRun": {"type": "boolean"},
            "items": {"type": "array", "items": {"type": "object", "properties": {
                "kind": {"type": "string"}, "namespace": {"type": "string"}, "name": {"type": "string"},
                "action": {"type": "string", "enum": ["created", "configured", "unchanged"]},
                "changes": {"type": "array", "items": {"type": "string"}, "description": "Fields that change, e.g. spec.image."}
            }}},
            "applySet": {"type": "string"},
            "warnings": {"type": "array", "items": {"type": "string"}, "description": "What Warn policies found (also sent as Warning headers)."},
            "pruned": {"type": "array", "description": "With an applyset: members no longer applied.", "items": {"type": "object", "properties": {
                "kind": {"type": "string"}, "namespace": {"type": "string"}, "name": {"type": "string"},
                "action": {"type": "string", "enum": ["deleted", "kept", "gone", "released"], "description": "kept: a database without pruneStateful; gone: already absent; released: applied outside the set since, not deleted."}
            }}}
        }}),
    );
    schemas.insert(
        "Event".into(),
        json!({"type": "object", "properties": {
            "kind": {"type": "string"}, "namespace": {"type": "string"}, "name": {"type": "string"}, "uid": {"type": "string"},
            "type": {"type": "string", "enum": ["Normal", "Warning"]}, "reason": {"type": "string"}, "message": {"type": "string"},
            "count": {"type": "integer"}, "firstTimestamp": {"type": "string", "format": "date-time"}, "lastTimestamp": {"type": "string", "format": "date-time"}
        }}),
    );
    schemas.insert(
        "EventList".into(),
        json!({"type": "object", "properties": {"items": {"type": "array", "items": schema_ref("Event")}}}),
    );
    schemas.insert(
        "NewEvent".into(),
        json!({"type": "object", "required": ["involvedObject", "type", "reason", "message"], "additionalProperties": false, "properties": {
            "involvedObject": {"type": "object", "required": ["kind", "name"], "additionalProperties": false, "properties": {
                "kind": {"type": "string", "description": "A kind, e.g. Sync."}, "name": {"type": "string"}
            }},
            "type": {"type": "string", "enum": ["Normal", "Warning"]},
            "reason": {"type": "string", "pattern": "^[A-Z][A-Za-z0-9]{0,63}$"},
            "message": {"type": "string", "maxLength": crate::answers::MAX_EVENT_MESSAGE_BYTES}
        }}),
    );
    add_access_refusals(&mut paths);
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "minicloud",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Kubernetes-shaped API of minicloud: objects under /apis/minicloud.dev/v1, watches as JSON lines, apply, events. With authentication on (cloud server --auth), every route but /healthz and /readyz needs a bearer token (docs/security.md)."
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "An API token (`mc_...`) from `cloud auth token create`."}}
        },
        "security": [{"bearer": []}],
    })
}

/// Routes that are public: no token, no refusal for want of one.
const PUBLIC_PATHS: [&str; 2] = ["/healthz", "/readyz"];

/// Adds to every operation what access control may answer (docs/security.md), and marks the
/// public ones as needing no token.
fn add_access_refusals(paths: &mut Map<String, Value>) {
    let refusals = [
        ("401", "Unauthorized: authentication is on and the request carries no valid token (missing, malformed, unknown, expired or revoked)"),
        ("403", "Forbidden: the token lacks the permission (the message names it), or a cross-site browser write"),
        ("429", "TooManyRequests: the token exceeded its rate (see Retry-After) or its open watches"),
    ];
    for (path, item) in paths.iter_mut() {
        let Some(operations) = item.as_object_mut() else { continue };
        for operation in operations.values_mut() {
            if PUBLIC_PATHS.contains(&path.as_str()) {
                operation["security"] = json!([]);
                continue;
            }
            let Some(responses) = operation.get_mut("responses").and_then(Value::as_object_mut) else { continue };
            for (code, description) in refusals {
                responses.entry(code).or_insert_with(|| json_response(description, schema_ref("Error")));
            }
        }
    }
}

/// Tokens, whoami and the audit log.
fn access_paths(paths: &mut Map<String, Value>, schemas: &mut Map<String, Value>) {
    schemas.insert(
        "Token".into(),
        json!({"type": "object", "description": "What the server keeps of a token (never the token itself).", "required": ["name", "role", "createdAt"], "properties": {
            "name": {"type": "string"},
            "role": {"type": "string", "enum": ["view", "edit", "admin"]},
            "namespace": {"type": "string", "description": "The one namespace the token is good for; absent: every namespace."},
            "createdAt": {"type": "string", "format": "date-time"},
            "expiresAt": {"type": "string", "format": "date-time"},
            "lastUsedAt": {"type": "string", "format": "date-time", "description": "Updated at most once a minute."},
            "revokedAt": {"type": "string", "format": "date-time"},
            "state": {"type": "string", "enum": ["active", "expired", "revoked"]},
            "token": {"type": "string", "description": "Only in the answer to the creation: the token, shown this once."}
        }}),
    );
    schemas.insert(
        "AuditEntry".into(),
        json!({"type": "object", "required": ["id", "time", "requestId", "principal", "verb", "resource", "code"], "properties": {
            "id": {"type": "integer"},
            "time": {"type": "string", "format": "date-time"},
            "requestId": {"type": "string", "description": "x-request-id of the request, as in the server's log."},
            "principal": {"type": "string", "description": "The token's name; anonymous without authentication; - without a valid token."},
            "verb": {"type": "string"}, "resource": {"type": "string"},
            "namespace": {"type": "string"}, "name": {"type": "string"},
            "code": {"type": "integer", "description": "The HTTP status answered."},
            "message": {"type": "string", "description": "Why it was refused or failed; for an apply, what it did."}
        }}),
    );
    let list_of = |schema: &str| json!({"type": "object", "required": ["items"], "properties": {"items": {"type": "array", "items": schema_ref(schema)}}});
    let mut create_responses = errors(
        &[
            ("400", "BadRequest or Invalid: a bad name (a DNS-1123 label), role, namespace or lifetime"),
            ("409", "AlreadyExists: a live token has this name"),
        ],
        true,
    );
    create_responses.insert(
        "201".into(),
        json_response("The token's record, with the token itself (`token`)", schema_ref("Token")),
    );
    let mut list_responses = errors(&[], false);
    list_responses.insert("200".into(), json_response("The tokens of the caller's scope, by name", list_of("Token")));
    paths.insert(
        format!("{PREFIX}/tokens"),
        json!({
            "get": {"summary": "List tokens (role admin; a namespace's administrator sees its namespace's)", "operationId": "listTokens", "responses": list_responses},
            "post": {
                "summary": "Create a token (role admin, within the caller's scope); the answer holds the token, shown once",
                "operationId": "createToken",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["name", "role"], "additionalProperties": false, "properties": {
                        "name": {"type": "string", "description": "A DNS-1123 label."},
                        "role": {"type": "string", "enum": ["view", "edit", "admin"]},
                        "namespace": {"type": "string", "description": "Good for this namespace only (default: every namespace)."},
                        "expiresInSeconds": {"type": "integer", "minimum": 1, "maximum": 315_360_000}
                    }
                }}}},
                "responses": create_responses
            }
        }),
    );
    let mut revoke_responses = errors(
        &[
            ("400", "BadRequest: a name that is not a DNS-1123 label"),
            ("404", "NotFound: no such token in the caller's scope"),
        ],
        false,
    );
    revoke_responses.insert("200".into(), json_response("The revoked token's record", schema_ref("Token")));
    paths.insert(
        format!("{PREFIX}/tokens/{{name}}"),
        json!({"delete": {
            "summary": "Revoke a token: requests carrying it are refused from now on",
            "operationId": "revokeToken",
            "parameters": [parameter("name", "path", "Token name.", json!({"type": "string"}))],
            "responses": revoke_responses
        }}),
    );
    paths.insert(
        format!("{PREFIX}/whoami"),
        json!({"get": {"summary": "Who the server takes the caller for", "operationId": "whoami", "responses": {
            "200": json_response("The caller", json!({"type": "object", "required": ["name", "role", "authentication"], "properties": {
                "name": {"type": "string"}, "role": {"type": "string", "enum": ["view", "edit", "admin"]},
                "namespace": {"type": ["string", "null"]}, "authentication": {"type": "boolean", "description": "false: the server runs without authentication."}
            }}))
        }}}),
    );
    let mut audit_responses =
        errors(&[("400", "BadRequest: since is not an RFC 3339 time, or limit not a number")], false);
    audit_responses.insert("200".into(), json_response("Entries, oldest first", list_of("AuditEntry")));
    paths.insert(
        format!("{PREFIX}/audit"),
        json!({"get": {
            "summary": "The audit log: every change, secret reveal and refused request (role admin; a namespace's administrator sees its namespace's)",
            "operationId": "readAuditLog",
            "parameters": [
                parameter("since", "query", "Only entries at or after this RFC 3339 time.", json!({"type": "string", "format": "date-time"})),
                parameter("limit", "query", "At most this many entries, the newest (1 to 10000; default 10000).", json!({"type": "integer", "minimum": 1}))
            ],
            "responses": audit_responses
        }}),
    );
}

/// The document as checked in: pretty JSON with a final newline.
pub fn render() -> String {
    let mut text = serde_json::to_string_pretty(&document()).unwrap_or_default();
    text.push('\n');
    text
}
