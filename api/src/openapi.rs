//! The OpenAPI document of the API: the paths and schemas come from the handlers'
//! `#[utoipa::path]` and the types they answer (`super::views`, the wire types of `common`),
//! collected as the routes are registered (`super::documented_routes`); this module adds what
//! belongs to the whole document. Served at `GET /api/openapi.json`, shown at `/api/docs`.

use utoipa::openapi::path::{HttpMethod, OperationBuilder};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, ObjectBuilder, ResponseBuilder};
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(info(
    title = "CCTV cluster API",
    description = "Served by `scheduler run` (default 127.0.0.1:8088). Mutating endpoints need \
        `Authorization: Bearer <api.token>`. Errors are JSON `{\"error\": \"...\"}` naming what was wrong: 400 \
        for bad parameters, 401/403 for the token, 404 for unknown ids. Lists answer `{items, next_cursor}`; \
        pass `cursor=<next_cursor>` for the next page (`null`: the last page)."
))]
struct ApiDoc;

/// What the routes' documentation is added to.
pub fn base() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}

/// The routes' documentation plus the `bearer` scheme mutating endpoints name and this
/// document's own path.
pub fn finish(mut doc: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    let components = doc.components.get_or_insert_with(Default::default);
    components
        .add_security_scheme("bearer", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
    let answer = ResponseBuilder::new()
        .description("This document")
        .content("application/json", ContentBuilder::new().schema(Some(ObjectBuilder::new().build())).build())
        .build();
    let op = OperationBuilder::new()
        .summary(Some("This document (OpenAPI 3.1, generated from the handlers and the types they answer)"))
        .tag("pages")
        .response("200", answer)
        .build();
    doc.paths.add_path_operation("/api/openapi.json", vec![HttpMethod::Get], op);
    doc
}

#[cfg(test)]
mod tests {
    /// Every documented operation has a typed 200 answer and an error schema where it can
    /// fail, and exactly the mutating ones name the bearer scheme.
    #[test]
    fn every_operation_documents_its_answer_and_its_token() {
        let doc = serde_json::to_value(super::super::openapi_document()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().unwrap();
        assert!(paths.contains_key("/api/backups/file/{name}/protect") && paths.contains_key("/api/openapi.json"));
        for (path, item) in paths {
            for (method, op) in item.as_object().unwrap() {
                // A typed answer, a redirect (the sign-in pages) or a protocol switch (live video).
                let typed = op["responses"]["200"]["content"].is_object()
                    || op["responses"]["303"].is_object()
                    || op["responses"]["101"].is_object();
                assert!(typed, "{method} {path}: no typed 200 answer: {op}");
                let mutating = method != "get" && path != "/login";
                assert_eq!(op["security"].is_array(), mutating, "{method} {path}: bearer token");
            }
        }
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for name in ["ChannelView", "BackupItem", "EventPage", "StorageReport", "ErrorBody", "RelayStatus"] {
            assert!(schemas.contains_key(name), "no schema {name}: {:?}", schemas.keys().collect::<Vec<_>>());
        }
        assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    }
}
