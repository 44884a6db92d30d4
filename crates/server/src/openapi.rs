//! The hand-written OpenAPI 3.0 document served at `/openapi.json` (the integration tests
//! check that it lists exactly the routes the server answers).

use serde_json::{json, Value};

fn string() -> Value {
    json!({"type": "string"})
}

fn integer() -> Value {
    json!({"type": "integer", "minimum": 1})
}

fn number() -> Value {
    json!({"type": "number"})
}

/// An object schema with `required` and `optional` properties and no others.
fn object(required: &[(&str, Value)], optional: &[(&str, Value)]) -> Value {
    let props: serde_json::Map<String, Value> = required
        .iter()
        .chain(optional)
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let names: Vec<&str> = required.iter().map(|(k, _)| *k).collect();
    json!({"type": "object", "properties": props, "required": names, "additionalProperties": false})
}

fn error_responses(codes: &[(&str, &str)]) -> serde_json::Map<String, Value> {
    codes
        .iter()
        .map(|(code, why)| {
            (
                code.to_string(),
                json!({"description": why, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
            )
        })
        .collect()
}

/// A JSON-in operation: `summary`, request schema, the success response's content type and
/// description, and the error statuses it can answer.
fn post_json(
    summary: &str,
    request: Value,
    ok_type: &str,
    ok: &str,
    errors: &[(&str, &str)],
) -> Value {
    let mut responses = error_responses(errors);
    responses.insert(
        "200".into(),
        json!({"description": ok, "content": {ok_type: {"schema": {"type": if ok_type == "application/json" {"object"} else {"string"}}}}}),
    );
    json!({"post": {
        "summary": summary,
        "requestBody": {"required": true, "content": {"application/json": {"schema": request}}},
        "responses": responses,
    }})
}

fn get_op(summary: &str, content_type: &str) -> Value {
    json!({"get": {"summary": summary, "responses": {"200": {"description": summary,
        "content": {content_type: {"schema": {"type": if content_type == "application/json" {"object"} else {"string"}}}}}}}})
}

/// Error statuses every `/v1/` JSON endpoint can answer.
const COMMON: &[(&str, &str)] = &[
    ("400", "malformed body, unknown field or out-of-range value"),
    ("413", "body or text over the limit"),
    ("503", "overloaded (see Retry-After)"),
    ("504", "timed out"),
];

fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    COMMON.iter().chain(extra).copied().collect()
}

/// The OpenAPI document.
pub fn document() -> Value {
    let unknown = [("404", "unknown index, datastore or translator")];
    let retrieve_req = object(
        &[("query", string())],
        &[
            ("k", integer()),
            ("index", string()),
            (
                "retriever",
                json!({"type": "string", "enum": ["dense", "bm25", "hybrid", "weighted"]}),
            ),
        ],
    );
    let ask_req = object(
        &[("question", string())],
        &[
            ("k", integer()),
            ("index", string()),
            (
                "retriever",
                json!({"type": "string", "enum": ["dense", "bm25", "hybrid", "weighted"]}),
            ),
        ],
    );
    let lambda = json!({"type": "number", "minimum": 0, "maximum": 1});
    let score_req = object(
        &[("text", string())],
        &[("datastore", string()), ("lambda", lambda.clone())],
    );
    let gen_req = object(
        &[("prompt", string())],
        &[
            ("datastore", string()),
            ("lambda", lambda),
            ("max_new_tokens", integer()),
            ("temperature", number()),
            ("seed", json!({"type": "integer", "minimum": 0})),
        ],
    );
    let tr_req = object(
        &[("text", string())],
        &[("model", string()), ("datastore", string())],
    );
    let reload = json!({"post": {
        "summary": "Swap a QA index to its newest snapshot or re-open a kNN-LM or kNN-MT datastore",
        "security": [{"bearer": []}],
        "parameters": [{"name": "name", "in": "path", "required": true, "schema": string()}],
        "responses": {
            "200": {"description": "previous and new version", "content": {"application/json": {"schema": {"type": "object"}}}},
            "401": {"description": "missing or wrong bearer token"},
            "404": {"description": "unknown name"},
        },
    }});
    json!({
        "openapi": "3.0.3",
        "info": {"title": "ralm", "version": env!("CARGO_PKG_VERSION"),
            "description": "Retrieval, open-domain QA, kNN-LM scoring and generation, translation."},
        "paths": {
            "/v1/retrieve": post_json("Retrieve passages", retrieve_req, "application/json", "passages, best first", &with(&unknown)),
            "/v1/ask": post_json("Answer a question with evidence", ask_req, "application/json", "answer, candidates and evidence", &with(&unknown)),
            "/v1/lm/score": post_json("Per-token log-probabilities under the kNN-LM", score_req, "application/json", "log-probabilities and perplexities", &with(&unknown)),
            "/v1/lm/generate": post_json("Generate with the kNN-LM", gen_req, "text/event-stream", "`token` events, then `done` (or `error`)", &with(&unknown)),
            "/v1/translate": post_json("Translate a sentence, with a kNN-MT datastore when named", tr_req, "application/json", "the translation", &with(&unknown)),
            "/v1/indexes": get_op("QA indexes with versions", "application/json"),
            "/v1/datastores": get_op("kNN-LM and kNN-MT datastores with manifests", "application/json"),
            "/v1/admin/reload/{name}": reload,
            "/healthz": get_op("Liveness", "application/json"),
            "/metrics": get_op("Prometheus metrics", "text/plain"),
            "/openapi.json": get_op("This document", "application/json"),
        },
        "components": {
            "schemas": {"Error": object(&[("error", string())], &[])},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    })
}
