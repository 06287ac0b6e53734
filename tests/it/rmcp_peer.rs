//! An MCP server written with rmcp, the official Rust SDK, over Streamable HTTP: the upstream
//! peer of the upstream-client and end-to-end tests.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use http::{Request, StatusCode};
use hyper::body::Incoming;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::Extension;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{ProgressNotificationParam, ServerCapabilities, ServerConfig};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{RoleServer, ServerHandler, schemars, tool, tool_handler, tool_router};
use serde_json::json;
use tokio::net::TcpListener;


#[derive(serde::Deserialize, schemars::JsonSchema)]
struct EchoArgs {
    text: String,
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct AddArgs {
    a: i64,
    b: i64,
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct SleepArgs {
    ms: u64,
}

#[derive(Clone)]
pub struct Demo {
    tool_router: ToolRouter<Self>,
    /// Set when a `sleep` call was cancelled.
    cancelled: Arc<AtomicBool>,
}

#[tool_router]
impl Demo {
    #[tool(description = "Echo the text")]
    fn echo(&self, Parameters(EchoArgs { text }): Parameters<EchoArgs>) -> String {
        text
    }

    #[tool(description = "Add two integers")]
    fn add(&self, Parameters(AddArgs { a, b }): Parameters<AddArgs>) -> String {
        (a + b).to_string()
    }

    #[tool(description = "Sleep, unless cancelled")]
    async fn sleep(
        &self,
        Parameters(SleepArgs { ms }): Parameters<SleepArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> String {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(ms)) => "slept".into(),
            _ = ctx.ct.cancelled() => {
                self.cancelled.store(true, Ordering::SeqCst);
                "cancelled".into()
            }
        }
    }

    #[tool(description = "The Authorization header the gateway sent")]
    fn whoami(&self, Extension(parts): Extension<http::request::Parts>) -> String {
        let h = |n: &str| parts.headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        json!({ "authorization": h("authorization"), "protocol": h("mcp-protocol-version") }).to_string()
    }

    #[tool(description = "Report three steps of progress")]
    async fn count(&self, ctx: RequestContext<RoleServer>) -> String {
        if let Some(token) = ctx.meta.get_progress_token() {
            for step in 1..=3 {
                let _ = ctx.peer.notify_progress(ProgressNotificationParam::new(token.clone(), step as f64)).await;
            }
        }
        "counted".into()
    }

    #[tool(description = "Drop every table")]
    fn drop_everything(&self) -> String {
        "dropped".into()
    }

    #[tool(description = "Say the tool list changed")]
    async fn change(&self, ctx: RequestContext<RoleServer>) -> String {
        let _ = ctx.peer.notify_tool_list_changed().await;
        "changed".into()
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Demo {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().enable_tool_list_changed().build())
    }
}

/// An rmcp Streamable HTTP server.
pub struct Rmcp {
    pub url: String,
    /// Its sessions: clearing them makes it forget ours.
    pub sessions: Arc<LocalSessionManager>,
    /// How many sessions (handshakes) it has served.
    pub sessions_opened: Arc<AtomicUsize>,
    pub cancelled: Arc<AtomicBool>,
}

/// `stateful`: sessions and SSE answers; else stateless JSON answers. `dead_session`: the
/// status it answers an unknown session with (rmcp says 404; real servers often say 400).
pub async fn rmcp(stateful: bool, dead_session: StatusCode) -> Rmcp {
    let sessions = Arc::new(LocalSessionManager::default());
    let opened = Arc::new(AtomicUsize::new(0));
    let cancelled = Arc::new(AtomicBool::new(false));
    let config = StreamableHttpServerConfig::default()
        .with_sse_keep_alive(None)
        .with_legacy_session_mode(stateful)
        .with_json_response(!stateful);
    let service = {
        let (opened, cancelled) = (opened.clone(), cancelled.clone());
        StreamableHttpService::new(
            move || {
                opened.fetch_add(1, Ordering::SeqCst);
                Ok(Demo { tool_router: Demo::tool_router(), cancelled: cancelled.clone() })
            },
            sessions.clone(),
            config,
        )
    };
    let url = serve(service, dead_session).await;
    Rmcp { url, sessions, sessions_opened: opened, cancelled }
}


/// Serves an rmcp Streamable HTTP service over HTTP/1 on a loopback port; returns its `/mcp` URL.
/// `dead_session` is what a 404 (rmcp's answer to an unknown session) is turned into.
pub async fn serve<H>(service: StreamableHttpService<H, LocalSessionManager>, dead_session: StatusCode) -> String
where
    H: ServerHandler + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let service = service.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let mut service = service.clone();
                    async move {
                        let mut resp = tower::Service::call(&mut service, req).await.unwrap();
                        if resp.status() == StatusCode::NOT_FOUND {
                            *resp.status_mut() = dead_session;
                        }
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(stream), svc).await;
            });
        }
    });
    format!("http://{addr}/mcp")
}
