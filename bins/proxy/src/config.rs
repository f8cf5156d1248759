//! mesh-proxy's one typed configuration: a TOML file, every key overridable from the
//! environment (`MESH__OUTBOUND__LISTEN=127.0.0.1:4140`), defaults that suit a sidecar. It is
//! made of mesh-stack's sections, which check themselves.

use std::path::Path;

use mesh_core::client::ClientConfig;
use mesh_core::config::{self as core_config, ConfigError, Invalid, Source};
use mesh_core::server::ServerConfig;
use serde::{Deserialize, Serialize};

pub use mesh_stack::config::*;

/// Everything mesh-proxy reads at start.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Log filter, in `tracing` env-filter syntax (`info`, `mesh_proxy=debug`).
    pub log: String,
    /// `plain` or `json`.
    pub log_format: LogFormat,
    /// The workload this proxy speaks for: the source of its outbound requests and the
    /// destination of its inbound ones, in metrics.
    pub workload: WorkloadConfig,
    /// What is measured.
    pub metrics: MetricsConfig,
    /// The admin listener.
    pub admin: AdminConfig,
    /// The outbound listener and the services it knows.
    pub outbound: OutboundConfig,
    /// The inbound listener, when the proxy fronts an app.
    pub inbound: Option<InboundConfig>,
    /// The workload's identity and mutual TLS; without it every hop is plaintext.
    pub identity: Option<IdentityConfig>,
    /// Where endpoints come from, for services whose `discovery` is not `static`.
    pub discovery: DiscoveryConfig,
    /// Threads and shutdown.
    pub runtime: RuntimeConfig,
    /// HTTP server settings of every listener.
    pub server: ServerConfig,
    /// HTTP client settings toward every endpoint.
    pub client: ClientConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            log: "info".to_owned(),
            log_format: LogFormat::Plain,
            workload: WorkloadConfig::default(),
            metrics: MetricsConfig::default(),
            admin: AdminConfig::default(),
            outbound: OutboundConfig::default(),
            inbound: None,
            identity: None,
            discovery: DiscoveryConfig::default(),
            runtime: RuntimeConfig::default(),
            server: ServerConfig::default(),
            client: ClientConfig::default(),
        }
    }
}

impl Config {
    /// Loads the file (or only defaults), applies `MESH__*` variables, and validates.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let source = path.map_or(Source::None, Source::File);
        let config: Self = core_config::load(source)?;
        config.validate()?;
        Ok(config)
    }

    /// Loads TOML text, applies `MESH__*` variables, and validates.
    pub fn from_toml_str(toml: &str) -> Result<Self, ConfigError> {
        let config: Self = core_config::load(Source::Toml(toml))?;
        config.validate()?;
        Ok(config)
    }

    /// Loads TOML text with these environment variables instead of the process's.
    pub fn from_toml_str_with_env(
        toml: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let config: Self = core_config::load_with_env(Source::Toml(toml), env)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot, section by section; the error names the key in full.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log) {
            return Err(Invalid::new("log", format!("{:?}", self.log), e.to_string()).into());
        }
        self.metrics.validate().map_err(|e| e.within("metrics"))?;
        self.runtime.validate().map_err(|e| e.within("runtime"))?;
        self.server.validate().map_err(|e| e.within("server"))?;
        self.client.validate().map_err(|e| e.within("client"))?;
        if let Some(identity) = &self.identity {
            identity.validate().map_err(|e| e.within("identity"))?;
        }
        if let Some(inbound) = &self.inbound {
            inbound
                .validate(self.identity.is_some())
                .map_err(|e| e.within("inbound"))?;
        }
        self.outbound.validate().map_err(|e| e.within("outbound"))?;
        let services = &self.outbound.services;
        self.discovery
            .validate(services, self.identity.as_ref())
            .map_err(|e| e.within("discovery"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const EXAMPLE: &str = r#"
[admin]
listen = "127.0.0.1:4191"
[outbound]
listen = "127.0.0.1:4140"
[[outbound.services]]
authority = "greeter.demo.svc.cluster.local:50051"
endpoints = ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]
[inbound]
listen = "127.0.0.1:4143"
app = "127.0.0.1:8080"
"#;

    fn addr(text: &str) -> std::net::SocketAddr {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    #[test]
    fn the_documented_shape_loads() {
        let c = Config::from_toml_str_with_env(EXAMPLE, no_env()).unwrap();
        assert_eq!(c.outbound.services.len(), 1);
        assert_eq!(c.outbound.services[0].endpoints.len(), 3);
        let named = EXAMPLE.replace(
            "\"127.0.0.1:9002\"",
            "{ addr = \"127.0.0.1:9002\", pod = \"greeter-1\" }",
        );
        let c = Config::from_toml_str_with_env(&named, no_env()).unwrap();
        let endpoint = c.outbound.services[0].endpoints[1].endpoint();
        assert_eq!(endpoint.label("pod"), Some("greeter-1"));
        assert_eq!(endpoint.addr, addr("127.0.0.1:9002"));
        assert_eq!(
            c.inbound.as_ref().map(|i| i.app),
            Some(addr("127.0.0.1:8080"))
        );
        assert_eq!(c.outbound.detect_timeout, DEFAULT_DETECT_TIMEOUT);
    }

    #[test]
    fn environment_overrides_keys() {
        let env = vec![
            (
                "MESH__OUTBOUND__LISTEN".to_owned(),
                "127.0.0.1:5140".to_owned(),
            ),
            ("MESH__RUNTIME__THREADS".to_owned(), "1".to_owned()),
            ("MESH__OUTBOUND__DETECT_TIMEOUT".to_owned(), "2s".to_owned()),
        ];
        let c = Config::from_toml_str_with_env(EXAMPLE, env).unwrap();
        assert_eq!(c.outbound.listen, addr("127.0.0.1:5140"));
        assert_eq!(c.runtime.threads, 1);
        assert_eq!(c.outbound.detect_timeout, Duration::from_secs(2));
    }

    #[test]
    fn errors_name_the_key() {
        let bad = EXAMPLE.replace("127.0.0.1:9002", "not-an-address");
        let e = Config::from_toml_str_with_env(&bad, no_env())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("outbound.services") && e.contains("endpoints"),
            "{e}"
        );

        let bad = EXAMPLE.replace("[admin]", "[admin]\nlisten_port = 1");
        let e = Config::from_toml_str_with_env(&bad, no_env())
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen_port"), "{e}");

        let bad = EXAMPLE.replace("greeter.demo.svc.cluster.local:50051", "bad host:1");
        let e = Config::from_toml_str_with_env(&bad, no_env())
            .unwrap_err()
            .to_string();
        assert!(e.contains("outbound.services[0].authority"), "{e}");

        let env = vec![("MESH__RUNTIME__THREADS".to_owned(), "many".to_owned())];
        let e = Config::from_toml_str_with_env(EXAMPLE, env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("runtime.threads") && e.contains("many"), "{e}");
    }

    #[test]
    fn out_of_range_settings_are_named() {
        let env = vec![(
            "MESH__CLIENT__KEEP_ALIVE_INTERVAL".to_owned(),
            "0s".to_owned(),
        )];
        let e = Config::from_toml_str_with_env(EXAMPLE, env)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("client.keep_alive_interval") && e.contains("0s"),
            "{e}"
        );
        let env = vec![(
            "MESH__SERVER__INITIAL_STREAM_WINDOW".to_owned(),
            "4294967295".to_owned(),
        )];
        let e = Config::from_toml_str_with_env(EXAMPLE, env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("server.initial_stream_window"), "{e}");
    }

    #[test]
    fn opaque_services_need_a_listener() {
        let bad = format!(
            "{EXAMPLE}\n[[outbound.services]]\nauthority = \"db:5432\"\nendpoints = [\"127.0.0.1:5432\"]\nopaque = true\n"
        );
        let bad = bad.replace(
            "[inbound]\nlisten = \"127.0.0.1:4143\"\napp = \"127.0.0.1:8080\"\n",
            "",
        );
        let e = Config::from_toml_str_with_env(&bad, no_env())
            .unwrap_err()
            .to_string();
        assert!(e.contains("outbound.services[1].listen"), "{e}");
    }
}
