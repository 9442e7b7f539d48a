//! Opens a browser on a login URL without putting the URL in any process's
//! arguments.
//!
//! An authorize URL carries the login's `state`, the PKCE challenge and the
//! loopback redirect's port; a device login's complete verification URL
//! carries the user code. Every local user can read a process's arguments
//! (`/proc/PID/cmdline`), and both `xdg-open` and the browser it starts keep
//! theirs for as long as they run. So the browser is sent to a small page
//! instead: a file that only this user can read (mode 0600, in a fresh 0700
//! directory under `$XDG_RUNTIME_DIR` or the temp dir) which redirects to the
//! URL. The command line then names only that file. The page is removed when
//! the login ends, or after [`PAGE_LIFETIME`] if the login takes longer.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the redirect page stays when the login is still going on. A
/// browser reads it within seconds of being started, even from cold; after
/// that it is only a copy of a secret URL lying around.
const PAGE_LIFETIME: Duration = Duration::from_secs(60);

/// The page's file name inside its private directory. The `.html` suffix is
/// what makes `xdg-open` hand the file to the browser.
const PAGE_FILE: &str = "login.html";

/// Why the redirect page could not be made: the browser is then not opened,
/// and the user copies the URL that was printed instead.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    #[error("the login URL is not an http(s) URL, so it is not handed to a browser")]
    NotWebUrl,
    #[error("cannot write the browser's redirect page in {}: {source}", dir.display())]
    Write {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// Tries to open `url` in a browser on a graphical session (none with
/// `--no-browser`). Returns the redirect page the browser was given, to be
/// kept until the login ends: dropping it removes the page.
pub fn open(url: &str, no_browser: bool) -> Option<RedirectPage> {
    if no_browser || !graphical_session() {
        return None;
    }
    let page = match RedirectPage::write(url) {
        Ok(page) => page,
        Err(e) => {
            eprintln!("tokenctl: not opening a browser: {e}; open the URL above yourself.");
            return None;
        }
    };
    let opened = std::process::Command::new("xdg-open")
        .arg(page.file_url())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    // Without a browser nobody will read the page: remove it at once.
    opened.is_ok().then_some(page)
}

/// Whether a browser could be shown here at all (an X11 or Wayland display).
fn graphical_session() -> bool {
    std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some()
}

/// A page that sends the browser on to the login URL, readable by this user
/// only, removed on drop (or by its timer, whichever is first).
pub struct RedirectPage {
    file: PathBuf,
    /// Dropping it wakes the timer thread, which then removes the page.
    stop: Option<Sender<()>>,
    remover: Option<JoinHandle<()>>,
}

impl RedirectPage {
    /// Writes the page for `url` in a fresh private directory and starts its
    /// timer.
    pub fn write(url: &str) -> Result<RedirectPage, PageError> {
        RedirectPage::write_for(url, PAGE_LIFETIME)
    }

    /// [`RedirectPage::write`], removed after `lifetime` at the latest.
    fn write_for(url: &str, lifetime: Duration) -> Result<RedirectPage, PageError> {
        let target = url::Url::parse(url).map_err(|_| PageError::NotWebUrl)?;
        if !matches!(target.scheme(), "http" | "https") {
            return Err(PageError::NotWebUrl);
        }
        let base = private_base();
        let failed = |source| PageError::Write {
            dir: base.clone(),
            source,
        };
        let dir = private_dir(&base).map_err(failed)?;
        let file = dir.path().join(PAGE_FILE);
        write_private(&file, redirect_html(target.as_str()).as_bytes()).map_err(failed)?;
        let (stop, stopped) = mpsc::channel::<()>();
        let remover = std::thread::spawn(move || {
            let _ = stopped.recv_timeout(lifetime);
            drop(dir);
        });
        Ok(RedirectPage {
            file,
            stop: Some(stop),
            remover: Some(remover),
        })
    }

    /// The `file://` URL of the page: what the browser's command line shows.
    pub fn file_url(&self) -> String {
        url::Url::from_file_path(&self.file)
            .map(String::from)
            .unwrap_or_else(|()| self.file.display().to_string())
    }
}

impl Drop for RedirectPage {
    /// Removes the page before returning, so that it is gone once
    /// `tokenctl login` has exited.
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(remover) = self.remover.take() {
            let _ = remover.join();
        }
    }
}

/// Where the page's directory goes: `$XDG_RUNTIME_DIR` (the user's own, on
/// a tmpfs emptied at logout), else the temp dir.
fn private_base() -> PathBuf {
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|dir| dir.is_absolute() && dir.is_dir())
        .unwrap_or_else(std::env::temp_dir)
}

/// A new directory with a random name that only this user can enter (0700
/// on Unix; the temp dir is already per-user on Windows). Being new, nobody
/// else can have put anything in it.
fn private_dir(base: &Path) -> std::io::Result<tempfile::TempDir> {
    let mut builder = tempfile::Builder::new();
    builder.prefix("tokenctl-login-");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o700));
    }
    builder.tempdir_in(base)
}

/// Creates `path` (which must not exist) readable and writable by this user
/// only, and writes `bytes` to it.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = File::options();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// The page: a meta refresh, a script for browsers that ignore it in local
/// files, and a link for a user whose browser does neither. The script
/// reads the link's address, so the URL is escaped once, for HTML only.
fn redirect_html(url: &str) -> String {
    let url = escape_html(url);
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\">\n\
         <meta name=\"referrer\" content=\"no-referrer\">\n\
         <meta http-equiv=\"refresh\" content=\"0;url={url}\">\n\
         <title>tokend login</title></head>\n\
         <body style=\"font-family:sans-serif;margin:3em\">\n\
         <p>Taking you to the login page. If nothing happens, \
         <a id=\"login\" href=\"{url}\">open the login page</a>.</p>\n\
         <script>location.replace(document.getElementById(\"login\").href);</script>\n\
         </body></html>\n"
    )
}

/// Escapes text for an HTML attribute value in double quotes or for text
/// between tags.
fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_is_escaped_for_html_in_the_refresh_the_link_and_nowhere_else() {
        let html = redirect_html("https://idp/auth?a=1&b=\"x\"<y>'z'");
        let escaped = "https://idp/auth?a=1&amp;b=&quot;x&quot;&lt;y&gt;&#39;z&#39;";
        assert!(
            html.contains(&format!("content=\"0;url={escaped}\"")),
            "{html}"
        );
        assert!(html.contains(&format!("href=\"{escaped}\"")), "{html}");
        assert_eq!(html.matches("https://idp").count(), 2, "{html}");
        assert!(!html.contains("a=1&b"), "{html}");
    }

    #[test]
    fn only_web_urls_get_a_page() {
        for bad in ["javascript:alert(1)", "file:///etc/passwd", "not a url"] {
            assert!(
                matches!(RedirectPage::write(bad), Err(PageError::NotWebUrl)),
                "{bad}"
            );
        }
    }

    #[cfg(unix)]
    #[test]
    fn the_page_is_private_names_no_secret_and_is_removed_on_drop() {
        use std::os::unix::fs::PermissionsExt;
        let url = "https://idp.example/auth?state=s3cr3t&code_challenge=c4";
        let page = RedirectPage::write(url).unwrap();
        let file_url = page.file_url();
        assert!(file_url.starts_with("file:///"), "{file_url}");
        assert!(!file_url.contains("s3cr3t") && !file_url.contains('?'));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = page.file.parent().unwrap().to_path_buf();
        assert_eq!(mode(&page.file), 0o600);
        assert_eq!(mode(&dir), 0o700);
        let html = std::fs::read_to_string(&page.file).unwrap();
        assert!(
            html.contains("state=s3cr3t&amp;code_challenge=c4"),
            "{html}"
        );
        drop(page);
        assert!(!dir.exists(), "{} is still there", dir.display());
    }

    #[test]
    fn the_page_is_removed_when_its_time_is_up_even_while_the_login_goes_on() {
        let page = RedirectPage::write_for("https://idp.example/auth", Duration::ZERO).unwrap();
        let dir = page.file.parent().unwrap().to_path_buf();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while dir.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!dir.exists(), "{} is still there", dir.display());
        drop(page);
    }
}
