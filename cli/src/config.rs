//! Config files shared by `warren` and `warren-coordinator` (edge layer): read a TOML file once
//! into a plain-data struct (`#[serde(deny_unknown_fields)]` on the caller's side), and turn
//! every problem into ONE line that names the file and, where there is one, the key — never
//! toml's multi-line snippet.
//!
//! Each binary declares its file as a struct of `Option` fields (a missing key means "use the
//! default"), loads it with [`load`] and merges it with its flags: flag, else file, else default.
//! Values that need more than a type check (ranges) are checked during that merge, with
//! [`Loaded::invalid`] for an error of the same shape.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

/// Largest config file read, in bytes: a real one is a few hundred bytes; this only keeps a
/// wrong path (a disk image, /dev/zero) from being read whole.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Why a config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be opened or read.
    #[error("cannot read config file {}: {cause}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said (in the message, not as a `source`: the one-line error would say
        /// it twice).
        cause: std::io::Error,
    },
    /// The file is larger than [`MAX_CONFIG_BYTES`].
    #[error("config file {} is larger than {MAX_CONFIG_BYTES} bytes", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The file is not valid TOML, or a key is unknown or has a value of the wrong type.
    #[error("config file {}{}: {message}", path.display(), at(*line, key.as_deref()))]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line of the problem, when toml reported a position.
        line: Option<usize>,
        /// The key on that line, when there is one.
        key: Option<String>,
        /// toml's message, on one line (`unknown field` said as `unknown key`).
        message: String,
    },
    /// A key parsed, but its value is not allowed (e.g. out of range).
    #[error("config file {}: {key}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong with the value.
        message: String,
    },
}

/// ` line N (key `k`)` for [`ConfigError::Parse`], or nothing.
fn at(line: Option<usize>, key: Option<&str>) -> String {
    match (line, key) {
        (Some(n), Some(k)) => format!(", line {n}, key `{k}`"),
        (Some(n), None) => format!(", line {n}"),
        (None, _) => String::new(),
    }
}

/// A parsed config file and where it came from (for errors found while merging).
#[derive(Debug, Clone)]
pub struct Loaded<T> {
    /// The file it was read from.
    pub path: PathBuf,
    /// Its contents.
    pub values: T,
}

impl<T> Loaded<T> {
    /// An error about `key`'s value in this file.
    pub fn invalid(&self, key: &str, message: impl Display) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.clone(),
            key: key.to_string(),
            message: message.to_string(),
        }
    }
}

/// Reads and parses the TOML file at `path` into `T`.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<Loaded<T>, ConfigError> {
    use std::io::Read;
    let read_err = |cause| ConfigError::Read {
        path: path.to_path_buf(),
        cause,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut text = String::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(read_err)?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    let values = parse(&text).map_err(|(line, key, message)| ConfigError::Parse {
        path: path.to_path_buf(),
        line,
        key,
        message,
    })?;
    Ok(Loaded {
        path: path.to_path_buf(),
        values,
    })
}

/// Parses `text`; an error is (line, key on that line, one-line message).
fn parse<T: DeserializeOwned>(text: &str) -> Result<T, (Option<usize>, Option<String>, String)> {
    toml::from_str(text).map_err(|e: toml::de::Error| {
        let message = e
            .message()
            .trim()
            .replace('\n', " ")
            .replace("unknown field", "unknown key");
        let (line, key) = match e.span() {
            Some(span) => {
                let start = span.start.min(text.len());
                let line_no = text[..start].matches('\n').count() + 1;
                let line_text = text.lines().nth(line_no - 1).unwrap_or_default();
                (Some(line_no), key_of(line_text))
            }
            None => (None, None),
        };
        // An unknown key names itself in the message; do not say it twice.
        let key = key.filter(|_| !message.starts_with("unknown key"));
        (line, key, message)
    })
}

/// The bare key of a `key = value` line, if the line is one.
fn key_of(line: &str) -> Option<String> {
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    bare.then(|| key.to_string())
}

/// Every key the file type `T` accepts, from serde's own "expected one of" list (so that a key
/// added to `T` shows up without a second list to keep in step).
pub fn known_keys<T: DeserializeOwned>() -> Vec<String> {
    let message = match parse::<T>("zzz_not_a_key = 1\n") {
        Ok(_) => return Vec::new(),
        Err((_, _, message)) => message,
    };
    message
        .split('`')
        .skip(3)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// Checks an example config file the way `deploy/` writes them (every key present, commented
/// out as `# key = default`): the file parses as `T`, the file with those keys uncommented
/// parses too (returned, for the caller to check the values), and no key of `T` is missing.
pub fn check_example<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    parse::<T>(text).map_err(|(line, _, m)| format!("as written, line {line:?}: {m}"))?;
    let uncommented: String = text
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest) if rest.contains(" = ") => rest,
            _ => l,
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let all = parse::<T>(&uncommented)
        .map_err(|(line, _, m)| format!("uncommented, line {line:?}: {m}"))?;
    let keys = known_keys::<T>();
    if keys.is_empty() {
        return Err("no keys found in the file type".into());
    }
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| {
            !uncommented
                .lines()
                .any(|l| l.starts_with(&format!("{k} = ")))
        })
        .collect();
    if !missing.is_empty() {
        return Err(format!("keys not documented: {missing:?}"));
    }
    Ok(all)
}

/// `deserialize_with` for an optional value written as a string and parsed with its `FromStr`
/// (socket addresses, CIDRs, cipher names), so that a file accepts exactly what the flag does.
pub fn from_str_opt<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: Display,
{
    let s = String::deserialize(d)?;
    s.parse()
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::net::SocketAddr;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct File {
        name: Option<String>,
        port: Option<u16>,
        #[serde(default, deserialize_with = "from_str_opt")]
        listen: Option<SocketAddr>,
    }

    fn scratch(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("warren-cli-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn example_files_are_checked() {
        assert_eq!(known_keys::<File>(), ["name", "port", "listen"]);
        let good = "# a comment\n# name = \"x\"\n# port = 1\n# listen = \"127.0.0.1:9\"\n";
        let all: File = check_example(good).unwrap();
        assert_eq!(all.port, Some(1));
        let missing = "# name = \"x\"\n# port = 1\n";
        assert!(check_example::<File>(missing)
            .unwrap_err()
            .contains("listen"));
        let bad = "# name = \"x\"\n# port = \"one\"\n# listen = \"127.0.0.1:9\"\n";
        assert!(check_example::<File>(bad)
            .unwrap_err()
            .contains("uncommented"));
    }

    #[test]
    fn loads_known_keys_and_leaves_missing_ones_empty() {
        let path = scratch("ok", "# c\nname = \"a\"\nlisten = \"127.0.0.1:9\"\n");
        let got: Loaded<File> = load(&path).unwrap();
        assert_eq!(
            got.values,
            File {
                name: Some("a".into()),
                port: None,
                listen: Some("127.0.0.1:9".parse().unwrap()),
            }
        );
        assert_eq!(got.path, path);
        let empty: Loaded<File> = load(&scratch("empty", "")).unwrap();
        assert_eq!(empty.values, File::default());
    }

    #[test]
    fn unknown_key_is_named_with_the_file_on_one_line() {
        let path = scratch("unknown", "name = \"a\"\nprot = 5\n");
        let e = load::<File>(&path).unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains("unknown key `prot`"), "{e}");
        assert!(e.contains("line 2"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key, what) in [
            ("port = \"x\"\n", "port", "invalid type"),
            ("port = 70000\n", "port", "u16"),
            ("\nlisten = \"nowhere\"\n", "listen", "nowhere"),
        ] {
            let path = scratch("bad", text);
            let e = load::<File>(&path).unwrap_err().to_string();
            assert!(e.contains(&format!("key `{key}`")), "{e}");
            assert!(e.contains(what), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
        let e = load::<File>(&scratch("syntax", "name = \n")).unwrap_err();
        assert!(matches!(e, ConfigError::Parse { line: Some(1), .. }), "{e}");
    }

    #[test]
    fn missing_file_and_merge_errors_name_the_file() {
        let e = load::<File>(Path::new("/nonexistent/warren.toml")).unwrap_err();
        let line = crate::one_line_error(&e.into());
        assert_eq!(
            line,
            "error: cannot read config file /nonexistent/warren.toml: \
             No such file or directory (os error 2)"
        );
        let loaded: Loaded<File> = load(&scratch("merge", "port = 0\n")).unwrap();
        let e = loaded.invalid("port", "must be 1 or more").to_string();
        assert!(e.ends_with(": port: must be 1 or more"), "{e}");
    }
}
