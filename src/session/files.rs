//! PHP's `files` session store: `session.save_path` (`[N;[MODE;]]/path`) and `sess_<id>` files,
//! laid out in N levels of one-character folders taken from the id.

use std::path::PathBuf;

/// A parsed `session.save_path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavePath {
    pub depth: usize,
    pub dir: PathBuf,
}

impl SavePath {
    /// Parses `/path`, `N;/path` or `N;MODE;/path` as PHP's mod_files does.
    pub fn parse(s: &str) -> Result<SavePath, String> {
        let parts: Vec<&str> = s.split(';').collect();
        let (depth, dir) = match parts.as_slice() {
            [dir] => (0, *dir),
            [n, dir] => (
                n.parse::<usize>()
                    .map_err(|_| format!("`{n}` is not a depth"))?,
                *dir,
            ),
            [n, mode, dir] => {
                u32::from_str_radix(mode, 8)
                    .map_err(|_| format!("`{mode}` is not an octal mode"))?;
                (
                    n.parse::<usize>()
                        .map_err(|_| format!("`{n}` is not a depth"))?,
                    *dir,
                )
            }
            _ => return Err(format!("`{s}` has too many `;`")),
        };
        if dir.is_empty() {
            return Err("empty directory".into());
        }
        if depth > 32 {
            return Err(format!("depth {depth} is more than PHP allows"));
        }
        Ok(SavePath {
            depth,
            dir: PathBuf::from(dir),
        })
    }

    /// The file of a (validated) session id; None when the id is shorter than the depth.
    pub fn file_for(&self, id: &str) -> Option<PathBuf> {
        if id.len() < self.depth {
            return None;
        }
        let mut p = self.dir.clone();
        for c in id.chars().take(self.depth) {
            p.push(c.to_string());
        }
        p.push(format!("sess_{id}"));
        Some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_path_forms() {
        assert_eq!(
            SavePath::parse("/var/lib/php/sessions").expect("ok").depth,
            0
        );
        let p = SavePath::parse("2;/tmp/s").expect("ok");
        assert_eq!(
            p.file_for("abcd").expect("deep enough"),
            PathBuf::from("/tmp/s/a/b/sess_abcd")
        );
        let p = SavePath::parse("1;700;/tmp/s").expect("ok");
        assert_eq!(p.depth, 1);
        assert!(SavePath::parse("x;/tmp").is_err());
        assert!(SavePath::parse("1;999;/tmp").is_err());
    }
}
