//! Lab results worth keeping: measurements and outcomes printed by the tests.
//!
//! Lab layer. The test harness captures the output of passing tests, so [`note!`] also
//! appends each line to the file named by `WARREN_LAB_REPORT` (set by `scripts/test.sh`,
//! which prints the file at the end of the run).

use std::fmt;
use std::io::Write;

/// Prints one result line and appends it to the `WARREN_LAB_REPORT` file, if set.
pub fn note(args: fmt::Arguments<'_>) {
    let line = args.to_string();
    eprintln!("{line}");
    if let Some(path) = std::env::var_os("WARREN_LAB_REPORT") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// `format!`-style [`note`].
#[macro_export]
macro_rules! note {
    ($($arg:tt)*) => {
        $crate::report::note(format_args!($($arg)*))
    };
}
