//! The OpenAPI document. Paths come from the route table itself (each
//! handler's `#[utoipa::path]`), so the document cannot drift from the code.

use utoipa::openapi::header::Header;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{Object, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr, Response};
use utoipa::{Modify, OpenApi};

use crate::actions::{BlockEntityPayload, SetModePayload, UnblockEntityPayload};
use crate::error::{FieldError, Problem};

#[derive(OpenApi)]
#[openapi(
    info(title = "Valhalla security API", description = "Policy, blocklist, action workflow and honeypot bridge."),
    components(schemas(Problem, FieldError, BlockEntityPayload, UnblockEntityPayload, SetModePayload)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "policy"), (name = "blocklist"), (name = "actions"), (name = "honeypots"),
        (name = "tokens"), (name = "audit"), (name = "dashboard"),
        (name = "crowdsec", description = "CrowdSec Local API bouncer endpoints, in its shapes")
    )
)]
pub struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, document: &mut utoipa::openapi::OpenApi) {
        let components = document.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "honeypot_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-HONEYPOT-KEY"))),
        );
        components.add_security_scheme(
            "crowdsec_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Api-Key",
                "a Valhalla token (role `bouncer`), as CrowdSec bouncers send it",
            ))),
        );
    }
}

/// The media type of every error answer (RFC 9457).
const PROBLEM_MEDIA_TYPE: &str = "application/problem+json";

/// Documents the error answers of every operation as `application/problem+json`
/// with the `Problem` schema. The statuses follow from the operation's shape,
/// as the extractors and `Principal::require` produce them, so no handler
/// has to list them: credentials give 401, a bearer token's role 403,
/// parameters or a body 400, a path parameter 404, a body 413, 415 and 422.
/// Every path the rate limiter covers may also answer 429.
/// Error statuses a handler documents itself keep their description.
/// The CrowdSec endpoints under `/v1/` answer in CrowdSec's own shapes and
/// document their errors themselves.
pub fn with_problem_responses(mut document: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    for (path, item) in document.paths.paths.iter_mut() {
        let rate_limited = !crate::ratelimit::EXEMPT_PATHS.contains(&path.as_str());
        let crowdsec = path.starts_with("/v1/");
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
            &mut item.head,
        ];
        for operation in operations.into_iter().flatten() {
            if !crowdsec {
                add_problem_responses(operation);
            }
            if rate_limited {
                add_rate_limited_response(operation);
            }
        }
    }
    document
}

fn add_problem_responses(operation: &mut Operation) {
    let schemes = security_scheme_names(operation);
    let parameters = operation.parameters.as_deref().unwrap_or_default();
    let has_body = operation.request_body.is_some();
    let mut statuses = Vec::new();
    if !schemes.is_empty() {
        statuses.push(401);
    }
    if schemes.iter().any(|scheme| scheme == "bearer") {
        statuses.push(403);
    }
    if !parameters.is_empty() || has_body {
        statuses.push(400);
    }
    if parameters
        .iter()
        .any(|parameter| parameter.parameter_in == ParameterIn::Path)
    {
        statuses.push(404);
    }
    if has_body {
        statuses.extend([413, 415, 422]);
    }

    let responses = &mut operation.responses.responses;
    for status in statuses {
        responses
            .entry(status.to_string())
            .or_insert_with(|| RefOr::T(Response::new(problem_description(status))));
    }
    for (status, response) in responses.iter_mut() {
        let is_error = status.starts_with('4') || status.starts_with('5');
        if let (true, RefOr::T(response)) = (is_error, response) {
            if response.content.is_empty() {
                let schema = RefOr::Ref(Ref::from_schema_name("Problem"));
                let content = Content::new(Some(schema));
                response
                    .content
                    .insert(PROBLEM_MEDIA_TYPE.to_string(), content);
            }
        }
    }
}

/// 429 with its `Retry-After` header.
fn add_rate_limited_response(operation: &mut Operation) {
    let schema = RefOr::Ref(Ref::from_schema_name("Problem"));
    let retry_after = Header::builder()
        .schema(Object::with_type(Type::Integer))
        .description(Some(
            "whole seconds until this client's next request is admitted",
        ))
        .build();
    let response = ResponseBuilder::new()
        .description("over this client's rate limit (the current mode's `rate_limits`)")
        .header("Retry-After", retry_after)
        .content(PROBLEM_MEDIA_TYPE, Content::new(Some(schema)))
        .build();
    operation
        .responses
        .responses
        .entry("429".to_string())
        .or_insert(RefOr::T(response));
}

/// The names of the security schemes an operation accepts.
fn security_scheme_names(operation: &Operation) -> Vec<String> {
    operation
        .security
        .iter()
        .flatten()
        .filter_map(|requirement| serde_json::to_value(requirement).ok())
        .filter_map(|requirement| requirement.as_object().cloned())
        .flat_map(|requirement| requirement.into_iter().map(|(name, _)| name))
        .collect()
}

fn problem_description(status: u16) -> &'static str {
    match status {
        400 => "malformed JSON, query or path",
        401 => "missing or unknown credentials",
        403 => "the token's role may not do this",
        404 => "no such id",
        413 => "the body exceeds the configured limit",
        415 => "the body is not `application/json`",
        422 => "well-formed but invalid; `errors` names each offending field",
        _ => "error",
    }
}
