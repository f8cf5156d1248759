//! The route matcher: a match (JSON, as in a configuration) and a request (method, path and
//! headers, one per line) from the input; compiling refuses bad matches with a reason, and
//! testing never panics.

use mesh_route::MatchConfig;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Some(split) = data.iter().position(|b| *b == 0) else {
            return;
        };
        let Ok(matches) = serde_json::from_slice::<MatchConfig>(&data[..split]) else {
            return;
        };
        let Some(request) = request(&data[split + 1..]) else {
            return;
        };
        if let Err(why) = matches.test(&request) {
            assert!(!why.is_empty());
        }
    });
}

/// `METHOD /path` on the first line, then `name: value` lines.
fn request(text: &[u8]) -> Option<http::Request<()>> {
    let text = std::str::from_utf8(text).ok()?;
    let mut lines = text.lines();
    let (method, path) = lines.next()?.split_once(' ')?;
    let mut builder = http::Request::builder().method(method).uri(path);
    for line in lines {
        let (name, value) = line.split_once(':')?;
        builder = builder.header(name.trim(), value.trim());
    }
    builder.body(()).ok()
}
