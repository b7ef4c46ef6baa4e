//! `cutover init --from-nginx FILE`: a starting `cutover.toml` from an nginx config. The
//! `location` blocks become `[[route]]`s in file order (`location /a/` → `/a/*`, `location = /x`
//! → `/x`, a regular expression → a comment), `mode = "legacy"` where nginx passes to PHP
//! (`fastcgi_pass`, or `try_files` ending at a `.php` script) and `mode = "candidate"` where it
//! passes elsewhere (`proxy_pass`, `uwsgi_pass`, `grpc_pass`); the upstreams come from the first
//! `fastcgi_pass` and `proxy_pass` (through `upstream` blocks), `[upstreams.fastcgi]` from
//! `root` and `index`. What cannot be carried over is listed at the top for a person to check.
//! Pure: text in, text out.

/// Why the nginx file cannot be read as one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct NginxError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

/// One nginx directive: `name args…;` or `name args… { block }`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Directive {
    name: String,
    args: Vec<String>,
    line: usize,
    block: Option<Vec<Directive>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Open,
    Close,
    End,
}

fn tokenize(text: &str, file: &str) -> Result<Vec<(Token, usize)>, NginxError> {
    let mut out = Vec::new();
    let mut line = 1;
    let mut chars = text.chars().peekable();
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut Vec<(Token, usize)>, line: usize| {
        if !word.is_empty() {
            out.push((Token::Word(std::mem::take(word)), line));
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '\n' => {
                flush(&mut word, &mut out, line);
                line += 1;
            }
            c if c.is_whitespace() => flush(&mut word, &mut out, line),
            '#' if word.is_empty() => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        line += 1;
                        break;
                    }
                }
            }
            '{' => {
                flush(&mut word, &mut out, line);
                out.push((Token::Open, line));
            }
            '}' => {
                flush(&mut word, &mut out, line);
                out.push((Token::Close, line));
            }
            ';' => {
                flush(&mut word, &mut out, line);
                out.push((Token::End, line));
            }
            '"' | '\'' if word.is_empty() => {
                let start = line;
                let mut closed = false;
                while let Some(q) = chars.next() {
                    match q {
                        '\\' => {
                            if let Some(n) = chars.next() {
                                word.push(n);
                            }
                        }
                        q if q == c => {
                            closed = true;
                            break;
                        }
                        '\n' => {
                            line += 1;
                            word.push('\n');
                        }
                        q => word.push(q),
                    }
                }
                if !closed {
                    return Err(NginxError {
                        file: file.into(),
                        line: start,
                        message: format!("a {c}-quoted string is not closed"),
                    });
                }
                out.push((Token::Word(std::mem::take(&mut word)), line));
            }
            // Kept as written outside quotes: `\.php$` is a regular expression.
            c => word.push(c),
        }
    }
    flush(&mut word, &mut out, line);
    Ok(out)
}

fn parse_block(
    tokens: &[(Token, usize)],
    pos: &mut usize,
    file: &str,
    nested: bool,
) -> Result<Vec<Directive>, NginxError> {
    let mut out = Vec::new();
    let err = |line: usize, message: &str| NginxError {
        file: file.into(),
        line,
        message: message.into(),
    };
    while *pos < tokens.len() {
        let (tok, line) = &tokens[*pos];
        match tok {
            Token::Close if nested => {
                *pos += 1;
                return Ok(out);
            }
            Token::Close => return Err(err(*line, "`}` without a block to close")),
            Token::Open | Token::End => {
                return Err(err(*line, "a directive name is missing"));
            }
            Token::Word(name) => {
                let line = *line;
                let mut args = Vec::new();
                *pos += 1;
                loop {
                    let Some((t, l)) = tokens.get(*pos) else {
                        return Err(err(
                            line,
                            &format!("`{name}` does not end with `;` or a block"),
                        ));
                    };
                    *pos += 1;
                    match t {
                        Token::Word(w) => args.push(w.clone()),
                        Token::End => {
                            out.push(Directive {
                                name: name.clone(),
                                args,
                                line,
                                block: None,
                            });
                            break;
                        }
                        Token::Open => {
                            let block = parse_block(tokens, pos, file, true)?;
                            out.push(Directive {
                                name: name.clone(),
                                args,
                                line,
                                block: Some(block),
                            });
                            break;
                        }
                        Token::Close => return Err(err(*l, "`}` before the directive's `;`")),
                    }
                }
            }
        }
    }
    if nested {
        return Err(err(
            tokens.last().map_or(1, |(_, l)| *l),
            "a block is not closed (`}` missing)",
        ));
    }
    Ok(out)
}

/// What a location hands its requests to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pass {
    /// PHP: `fastcgi_pass TARGET`, or `try_files` ending at a script.
    Php(Option<String>),
    /// Another application: `proxy_pass URL` (or uwsgi/grpc).
    Other(String, String),
    /// nginx answers itself (files, return, …).
    Nginx,
}

fn pass_of(block: &[Directive]) -> Pass {
    let mut found = Pass::Nginx;
    for d in block {
        let first = d.args.first().cloned().unwrap_or_default();
        match d.name.as_str() {
            "fastcgi_pass" => return Pass::Php(Some(first)),
            "proxy_pass" | "uwsgi_pass" | "grpc_pass" | "scgi_pass" => {
                return Pass::Other(d.name.clone(), first)
            }
            "try_files" if d.args.last().is_some_and(|a| a.contains(".php")) => {
                found = Pass::Php(None);
            }
            "if" => {
                if let Some(b) = &d.block {
                    let inner = pass_of(b);
                    if inner != Pass::Nginx {
                        return inner;
                    }
                }
            }
            _ => {}
        }
    }
    found
}

/// nginx's `fastcgi_pass` target as a cutover upstream URL.
fn fastcgi_url(target: &str, upstreams: &[Directive]) -> Option<String> {
    let target = resolve_upstream(target, upstreams);
    if let Some(path) = target.strip_prefix("unix:") {
        return Some(format!("fastcgi+unix://{path}"));
    }
    if target.contains('$') {
        return None;
    }
    Some(format!("fastcgi://{target}"))
}

/// nginx's `proxy_pass` URL as a cutover upstream URL (its path, if any, dropped).
fn http_url(target: &str, upstreams: &[Directive]) -> Option<String> {
    let (scheme, rest) = target.split_once("://")?;
    if scheme != "http" && scheme != "https" {
        return None;
    }
    if let Some(unix) = rest.strip_prefix("unix:") {
        // proxy_pass http://unix:/run/app.sock:/uri
        let path = unix.split(':').next().unwrap_or(unix);
        return Some(format!("http+unix://{path}"));
    }
    let host = rest.split('/').next().unwrap_or(rest);
    if host.contains('$') {
        return None;
    }
    let host = resolve_upstream(host, upstreams);
    if let Some(path) = host.strip_prefix("unix:") {
        return Some(format!("http+unix://{path}"));
    }
    Some(format!("{scheme}://{host}"))
}

/// An `upstream NAME { server ADDR; }` block's first server, else the name itself.
fn resolve_upstream(name: &str, upstreams: &[Directive]) -> String {
    upstreams
        .iter()
        .find(|u| u.args.first().is_some_and(|n| n == name))
        .and_then(|u| u.block.as_ref())
        .and_then(|b| b.iter().find(|d| d.name == "server"))
        .and_then(|d| d.args.first())
        .cloned()
        .unwrap_or_else(|| name.to_string())
}

fn collect<'a>(ds: &'a [Directive], name: &str, out: &mut Vec<&'a Directive>) {
    for d in ds {
        if d.name == name {
            out.push(d);
        }
        if let Some(b) = &d.block {
            collect(b, name, out);
        }
    }
}

fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Comments never hold a line break.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// The `cutover.toml` for the nginx config `text` (named `file` in messages and comments).
pub fn from_nginx(text: &str, file: &str) -> Result<String, NginxError> {
    let tokens = tokenize(text, file)?;
    let mut pos = 0;
    let top = parse_block(&tokens, &mut pos, file, false)?;
    let mut upstream_blocks = Vec::new();
    collect(&top, "upstream", &mut upstream_blocks);
    let upstream_blocks: Vec<Directive> = upstream_blocks.into_iter().cloned().collect();
    let mut locations = Vec::new();
    collect(&top, "location", &mut locations);
    let mut checks: Vec<String> = Vec::new();
    let mut legacy: Option<(String, usize)> = None;
    let mut candidate: Option<(String, usize)> = None;
    let mut routes = String::new();
    let mut patterns: Vec<String> = Vec::new();
    let mut php_seen = false;
    for loc in &locations {
        let block = loc.block.as_deref().unwrap_or(&[]);
        let pass = pass_of(block);
        let written = one_line(&loc.args.join(" "));
        let (pattern, note) = match loc.args.as_slice() {
            [m, path] if m == "=" => (Some(path.clone()), None),
            [m, path] if m == "^~" => (Some(prefix_pattern(path)), None),
            [m, _] if m == "~" || m == "~*" => (None, None),
            [path] if path.starts_with('@') => {
                routes.push_str(&format!(
                    "# location {written} (line {}): a named location, reached only from inside nginx; no route.\n\n",
                    loc.line
                ));
                continue;
            }
            [path] => {
                let note = (!path.ends_with('/')).then(|| {
                    format!("nginx's prefix {path} also matches {path}-anything; this route matches {path} and {path}/…")
                });
                (Some(prefix_pattern(path)), note)
            }
            _ => (None, None),
        };
        match &pass {
            Pass::Php(target) => {
                php_seen = true;
                if let (None, Some(t)) = (&legacy, target) {
                    match fastcgi_url(t, &upstream_blocks) {
                        Some(u) => legacy = Some((u, loc.line)),
                        None => checks.push(format!(
                            "fastcgi_pass {t} (line {}) is not an address cutover can use: set upstreams.legacy",
                            loc.line
                        )),
                    }
                }
            }
            Pass::Other(directive, target) => {
                if candidate.is_none() {
                    match http_url(target, &upstream_blocks) {
                        Some(u) => candidate = Some((u, loc.line)),
                        None => checks.push(format!(
                            "{directive} {target} (line {}) is not an http:// address cutover can use: set upstreams.candidate",
                            loc.line
                        )),
                    }
                }
                if directive != "proxy_pass" {
                    checks.push(format!(
                        "location {written} (line {}) uses {directive}: cutover speaks HTTP to a candidate, so it needs an HTTP listener",
                        loc.line
                    ));
                } else if target
                    .split_once("://")
                    .is_some_and(|(_, r)| r.contains('/'))
                {
                    checks.push(format!(
                        "proxy_pass {target} (line {}) has a path: nginx replaces the location's prefix with it, cutover passes the path as it is",
                        loc.line
                    ));
                }
            }
            Pass::Nginx => {}
        }
        let Some(pattern) = pattern else {
            if pass != Pass::Nginx {
                checks.push(format!(
                    "location {written} (line {}) is a regular expression: in cutover its paths take the first route that matches them, which may send them elsewhere than nginx does",
                    loc.line
                ));
            }
            routes.push_str(&format!(
                "# location {written} (line {}): a regular expression; cutover routes by path pattern, so write a [[route]] by hand if these paths need one{}.\n\n",
                loc.line,
                match &pass {
                    Pass::Php(_) => " (nginx passes them to PHP: they are legacy)",
                    Pass::Other(..) => " (nginx passes them to the new application)",
                    Pass::Nginx => "",
                }
            ));
            continue;
        };
        if crate::route::Pattern::parse(&pattern).is_err() {
            checks.push(format!(
                "location {written} (line {}) has no cutover pattern: left out",
                loc.line
            ));
            continue;
        }
        if let Some(earlier) = patterns.iter().find(|p| shadows(p, &pattern)) {
            checks.push(format!(
                "route {pattern} (line {}) comes after {earlier}, which matches its paths first (cutover takes the first matching route, nginx the most specific location): move it up",
                loc.line
            ));
        }
        patterns.push(pattern.clone());
        let (mode, why) = match &pass {
            Pass::Php(Some(t)) => ("legacy", format!("fastcgi_pass {t}")),
            Pass::Php(None) => ("legacy", "try_files to a PHP script".to_string()),
            Pass::Other(d, t) => ("candidate", format!("{d} {t}")),
            Pass::Nginx => {
                checks.push(format!(
                    "location {written} (line {}) is answered by nginx itself (files, return, …): it is legacy here; with a FastCGI legacy, existing files under document_root are served from disk",
                    loc.line
                ));
                ("legacy", "answered by nginx itself".to_string())
            }
        };
        routes.push_str(&format!(
            "# location {written} (line {}): {}\n",
            loc.line,
            one_line(&why)
        ));
        if let Some(n) = note {
            routes.push_str(&format!("# {}\n", one_line(&n)));
        }
        routes.push_str(&format!(
            "[[route]]\npattern = {}\nmode = \"{mode}\"\n\n",
            toml_string(&pattern)
        ));
    }
    let mut roots = Vec::new();
    collect(&top, "root", &mut roots);
    let mut indexes = Vec::new();
    collect(&top, "index", &mut indexes);
    let legacy_url = match &legacy {
        Some((u, _)) => u.clone(),
        None => {
            checks.push(
                "no fastcgi_pass found: upstreams.legacy is a placeholder for the PHP application"
                    .into(),
            );
            "http://127.0.0.1:8081".into()
        }
    };
    let candidate_url = match &candidate {
        Some((u, _)) => u.clone(),
        None => {
            checks.push(
                "no proxy_pass found: upstreams.candidate is a placeholder for the Rust handlers"
                    .into(),
            );
            "http://127.0.0.1:8082".into()
        }
    };
    let fastcgi = legacy_url.starts_with("fastcgi");
    let document_root = roots.first().and_then(|d| d.args.first()).cloned();
    if fastcgi {
        if document_root.is_none() {
            checks.push("no root found: set upstreams.fastcgi.document_root".into());
        } else if roots.len() > 1 {
            checks.push(format!(
                "{} root directives: upstreams.fastcgi.document_root is the first",
                roots.len()
            ));
        }
    }
    if !php_seen {
        checks.push("no location passes to PHP".into());
    }
    let mut servers = Vec::new();
    collect(&top, "server", &mut servers);
    let servers: Vec<_> = servers.into_iter().filter(|s| s.block.is_some()).collect();
    if servers.len() > 1 {
        checks.push(format!(
            "{} server blocks: their locations are merged into one list; run a cutover per site if they differ",
            servers.len()
        ));
    }
    let mut includes = Vec::new();
    collect(&top, "include", &mut includes);
    for inc in includes {
        let what = inc.args.first().cloned().unwrap_or_default();
        if !what.ends_with("fastcgi_params") && !what.ends_with("fastcgi.conf") {
            checks.push(format!(
                "include {what} (line {}) is not read: locations in it are missing",
                inc.line
            ));
        }
    }
    let mut out = String::new();
    out.push_str(&format!(
        "# cutover.toml made by `cutover init --from-nginx {}`.\n",
        one_line(file)
    ));
    out.push_str("# Check by hand before use:\n");
    out.push_str("# - routes match in the order written, first match wins (nginx prefers exact, then the longest prefix, then regular expressions)\n");
    out.push_str("# - `legacy` routes are served by PHP and not compared; set mode = \"shadow\" on those the candidate implements\n");
    out.push_str("# - TLS, rewrites, headers and limits nginx applies are not carried over: keep nginx in front for them\n");
    for c in &checks {
        out.push_str(&format!("# - {}\n", one_line(c)));
    }
    out.push_str("\n[listen]\nproxy = \"127.0.0.1:8080\"\nadmin = \"127.0.0.1:9090\"\n\n");
    out.push_str("[upstreams]\n");
    out.push_str(&format!("legacy = {}", toml_string(&legacy_url)));
    if let Some((_, line)) = legacy {
        out.push_str(&format!("      # fastcgi_pass, line {line}"));
    }
    out.push('\n');
    out.push_str(&format!("candidate = {}", toml_string(&candidate_url)));
    if let Some((_, line)) = candidate {
        out.push_str(&format!("   # line {line}"));
    }
    out.push_str("\n\n");
    if fastcgi {
        let index = indexes
            .iter()
            .flat_map(|d| d.args.iter())
            .find(|a| a.ends_with(".php"))
            .cloned()
            .unwrap_or_else(|| "index.php".into());
        out.push_str("[upstreams.fastcgi]\n");
        out.push_str(&format!(
            "document_root = {}\n",
            toml_string(document_root.as_deref().unwrap_or("/var/www/html"))
        ));
        out.push_str(&format!("index = {}\n\n", toml_string(&index)));
    }
    out.push_str(&routes);
    Ok(out)
}

/// A location prefix as a cutover pattern: `/a/` → `/a/*`, `/` → `/*`.
fn prefix_pattern(path: &str) -> String {
    format!("{}/*", path.trim_end_matches('/'))
}

/// Whether every path `later` matches is matched by `earlier` (a `/x/*` above `/x/y/*`).
fn shadows(earlier: &str, later: &str) -> bool {
    match earlier.strip_suffix("/*") {
        Some(prefix) => {
            let l = later.strip_suffix("/*").unwrap_or(later);
            l == prefix || l.starts_with(&format!("{prefix}/"))
        }
        None => earlier == later,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISSUE: &str = r"
location /php-pages/ { fastcgi_pass unix:/run/php/php8.2-fpm.sock; include fastcgi_params; }
location = /about    { proxy_pass http://127.0.0.1:7001; }
location ~ \.php$    { fastcgi_pass unix:/run/php/php8.2-fpm.sock; }
location /           { proxy_pass http://127.0.0.1:7001; }
";

    #[test]
    fn routes_in_file_order_with_modes_and_upstreams() {
        let out = from_nginx(ISSUE, "site.conf").expect("parses");
        let c: toml::Value = toml::from_str(&out).expect("TOML");
        let routes = c["route"].as_array().expect("routes");
        let got: Vec<(&str, &str)> = routes
            .iter()
            .map(|r| {
                (
                    r["pattern"].as_str().unwrap_or(""),
                    r["mode"].as_str().unwrap_or(""),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("/php-pages/*", "legacy"),
                ("/about", "candidate"),
                ("/*", "candidate")
            ]
        );
        assert_eq!(
            c["upstreams"]["legacy"].as_str(),
            Some("fastcgi+unix:///run/php/php8.2-fpm.sock")
        );
        assert_eq!(
            c["upstreams"]["candidate"].as_str(),
            Some("http://127.0.0.1:7001")
        );
        assert!(out.contains("# location ~ \\.php$ (line 4): a regular expression"));
        assert!(out.contains("document_root = \"/var/www/html\""));
        assert!(out.contains("no root found"));
    }

    #[test]
    fn upstream_blocks_root_index_and_try_files() {
        let conf = r#"
http {
  upstream php { server 127.0.0.1:9000; }
  upstream app { server unix:/run/app.sock; }
  server {
    root /srv/site/public;
    index index.html app.php;
    location / { try_files $uri /app.php$is_args$args; }
    location /api/ { proxy_pass http://app; }
    location ~ \.php$ { fastcgi_pass php; }
    location @fallback { return 404; }
  }
}
"#;
        let out = from_nginx(conf, "x.conf").expect("parses");
        let c: toml::Value = toml::from_str(&out).expect("TOML");
        assert_eq!(
            c["upstreams"]["legacy"].as_str(),
            Some("fastcgi://127.0.0.1:9000")
        );
        assert_eq!(
            c["upstreams"]["candidate"].as_str(),
            Some("http+unix:///run/app.sock")
        );
        assert_eq!(
            c["upstreams"]["fastcgi"]["document_root"].as_str(),
            Some("/srv/site/public")
        );
        assert_eq!(c["upstreams"]["fastcgi"]["index"].as_str(), Some("app.php"));
        let routes = c["route"].as_array().expect("routes");
        assert_eq!(routes[0]["pattern"].as_str(), Some("/*"));
        assert_eq!(routes[0]["mode"].as_str(), Some("legacy"));
        // `/*` above `/api/*` takes its paths: said at the top.
        assert!(out.contains("route /api/* (line 9) comes after /*"));
        assert!(out.contains("a named location"));
    }

    #[test]
    fn broken_files_name_the_line() {
        let e = from_nginx("server {\n location / {\n", "bad.conf").expect_err("unclosed");
        assert_eq!(e.file, "bad.conf");
        assert!(e.message.contains("not closed"), "{e}");
        let e = from_nginx("location / { root \"/x; }\n", "q.conf").expect_err("quote");
        assert_eq!(e.line, 1);
        let e = from_nginx("}\n", "c.conf").expect_err("close");
        assert!(e.message.contains("without a block"));
    }

    #[test]
    fn comments_and_injection_stay_comments() {
        // A location written to break out of its comment line stays one line.
        let out = from_nginx(
            "location \"/a\nmode = 'x'\" { proxy_pass http://h:1; } # c { ;\n",
            "i.conf",
        )
        .expect("parses");
        let c: toml::Value = toml::from_str(&out).expect("TOML");
        assert!(c.get("mode").is_none(), "{out}");
    }
}
