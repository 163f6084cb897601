//! The admin listener: `/metrics`, `/healthz`, `/readyz` and `/backends`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use tower::service_fn;
use tower::util::BoxCloneService;

use crate::app::AppState;

pub type AdminService = BoxCloneService<Request<Incoming>, Response<Full<Bytes>>, Infallible>;

/// The admin service over the gateway's state.
pub fn service(state: Arc<AppState>) -> AdminService {
    BoxCloneService::new(service_fn(move |req: Request<Incoming>| {
        let state = state.clone();
        async move { Ok(handle(&state, &req)) }
    }))
}

fn handle(state: &AppState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            state.metrics.render().into(),
        ),
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            if state.backends.any_up() {
                reply(StatusCode::OK, "text/plain", "ready\n".into())
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "no backend is up\n".into(),
                )
            }
        }
        "/backends" => {
            let list: Vec<_> = state
                .backends
                .all()
                .iter()
                .map(|b| {
                    serde_json::json!({
                        "name": &*b.name,
                        "url": format!("{}://{}{}", b.scheme, b.authority, b.prefix),
                        "up": b.is_up(),
                    })
                })
                .collect();
            let body = serde_json::json!({ "backends": list }).to_string();
            reply(StatusCode::OK, "application/json", body.into())
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(body));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    res
}
