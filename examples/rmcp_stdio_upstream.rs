//! An MCP server written with rmcp, the official Rust SDK, serving over stdio: a peer nobody on
//! the gateway team wrote the protocol code of. `cargo test` builds it, and the integration
//! tests run it as a stdio upstream behind the gateway.

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{ServerCapabilities, ServerConfig};
use rmcp::{ServerHandler, ServiceExt, schemars, tool, tool_handler, tool_router};

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct Words {
    text: String,
}

#[derive(Clone)]
struct Stdio {
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl Stdio {
    #[tool(description = "Upper-case the text")]
    fn shout(&self, Parameters(Words { text }): Parameters<Words>) -> String {
        text.to_uppercase()
    }

    #[tool(description = "The environment variables this process sees, by name")]
    fn env_names(&self) -> String {
        let mut names: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
        names.sort();
        names.join(",")
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Stdio {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let server = Stdio { tool_router: Stdio::tool_router() }.serve(rmcp::transport::stdio()).await?;
    server.waiting().await?;
    Ok(())
}
