//! The Prometheus text exposition format (version 0.0.4), shared by the coordinator's
//! `GET /metrics` and the node's metrics listener (edge layer): the HELP/TYPE header of a metric
//! family and the escaping of HELP texts and label values. Each binary renders its own families
//! with these.

use std::fmt::Write as _;

/// Writes the `# HELP` and `# TYPE` lines of a metric family (`kind`: counter, gauge, ...).
pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    // Writing to a String cannot fail.
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// HELP text escaping: backslash and newline.
pub fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Label value escaping: backslash, double quote and newline.
pub fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_and_escapes() {
        let mut out = String::new();
        header(&mut out, "warren_x_total", "counter", "a \\ b\nc");
        assert_eq!(
            out,
            "# HELP warren_x_total a \\\\ b\\nc\n# TYPE warren_x_total counter\n"
        );
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
