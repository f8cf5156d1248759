//! The proxy's configuration loader: any text is a configuration or an error naming the
//! problem, never a panic; a loaded configuration validates and survives a round trip
//! through its own serialisation (what `/config` shows).

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let no_env = Vec::<(String, String)>::new();
        match mesh_proxy::Config::from_toml_str_with_env(text, no_env) {
            Ok(config) => {
                let shown = toml_text(&config);
                if let Some(shown) = shown {
                    let again = mesh_proxy::Config::from_toml_str_with_env(&shown, Vec::new());
                    assert!(again.is_ok(), "{shown}\n=> {again:?}");
                }
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    });
}

fn toml_text(config: &mesh_proxy::Config) -> Option<String> {
    toml::to_string(config).ok()
}
