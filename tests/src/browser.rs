//! A stand-in for the desktop's browser opener: an `xdg-open` put first on
//! `PATH` that records the arguments it was started with, which is what
//! every local user can read in `/proc/PID/cmdline` of `xdg-open` and of the
//! browser it starts. The test then plays the browser itself on the page it
//! was given.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Where the login page goes, as the test sets it up for tokenctl.
#[derive(Clone, Copy)]
pub enum PageHome {
    /// `XDG_RUNTIME_DIR` names a directory of the test's.
    RuntimeDir,
    /// No `XDG_RUNTIME_DIR`; `TMPDIR` names a directory of the test's.
    TempDir,
}

/// The fake opener's directory: `bin/xdg-open`, the record it writes, and
/// the directory tokenctl is told to put its page in.
pub struct FakeBrowser {
    dir: tempfile::TempDir,
    home: PageHome,
}

/// The page the fake opener was asked to open.
pub struct Page {
    /// The file its `file://` argument names.
    pub path: PathBuf,
    /// Its text, read while the login was waiting.
    pub html: String,
    /// The address its link sends the browser to, unescaped.
    pub target: String,
}

impl Page {
    /// Reads the page a `file://` argument in `argv` names; panics if none does.
    pub fn of(argv: &[String]) -> Page {
        let path = argv
            .iter()
            .find_map(|a| a.strip_prefix("file://"))
            .map(|p| PathBuf::from(percent_decode(p)))
            .unwrap_or_else(|| panic!("xdg-open was given no file:// page: {argv:?}"));
        let html = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read the page {}: {e}", path.display()));
        let target = link_of(&html);
        Page { path, html, target }
    }
}

impl FakeBrowser {
    pub fn new(home: PageHome) -> FakeBrowser {
        let dir = tempfile::Builder::new()
            .prefix("tokend-browser")
            .tempdir()
            .expect("temp dir");
        let bin = dir.path().join("bin");
        let pages = dir.path().join("pages");
        for d in [&bin, &pages] {
            std::fs::create_dir(d).expect("mkdir");
        }
        crate::set_mode(&pages, 0o700);
        let record = dir.path().join("argv");
        let script = format!(
            "#!/bin/sh\n# Records its arguments, one per line; written whole, then renamed.\nprintf '%s\\n' \"$@\" > '{0}.part' && mv '{0}.part' '{0}'\n",
            record.display()
        );
        let opener = bin.join("xdg-open");
        std::fs::write(&opener, script).expect("write the fake xdg-open");
        crate::set_mode(&opener, 0o755);
        FakeBrowser { dir, home }
    }

    /// The directory tokenctl is told to make its page's directory in.
    pub fn pages(&self) -> PathBuf {
        self.dir.path().join("pages")
    }

    /// Makes `cmd` (a tokenctl) find the fake opener and a display, and put
    /// its page under [`FakeBrowser::pages`].
    pub fn apply(&self, cmd: &mut Command) {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![self.dir.path().join("bin")];
        dirs.extend(std::env::split_paths(&path));
        cmd.env("PATH", std::env::join_paths(dirs).expect("PATH"))
            .env("DISPLAY", ":tokend-test")
            .env_remove("WAYLAND_DISPLAY");
        match self.home {
            PageHome::RuntimeDir => cmd.env("XDG_RUNTIME_DIR", self.pages()),
            PageHome::TempDir => cmd
                .env_remove("XDG_RUNTIME_DIR")
                .env("TMPDIR", self.pages()),
        };
    }

    /// Waits (up to 30 s) until the fake opener has run and returns its
    /// arguments; panics if it never ran.
    pub fn wait_argv(&self) -> Vec<String> {
        let record = self.dir.path().join("argv");
        let opened = crate::oidc::eventually(Duration::from_secs(30), || record.exists());
        assert!(opened, "tokenctl never started xdg-open");
        std::fs::read_to_string(&record)
            .expect("the fake xdg-open's record")
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// The permission bits of `path`.
pub fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The `href` of the page's link, HTML-unescaped.
fn link_of(html: &str) -> String {
    let start = html.find("href=\"").expect("the page has a link") + "href=\"".len();
    let end = start + html[start..].find('"').expect("the link's end");
    html[start..end]
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// `%XX` decoding of a `file://` URL's path.
fn percent_decode(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = path
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).expect("a UTF-8 path")
}
