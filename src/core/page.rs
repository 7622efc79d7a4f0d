//! The demo page at `GET /` (`PAGE`, on by default): a chat on the client
//! library with live figures, served from files in the repository
//! (`page/`, and `client/tokenedge.js`) bundled at build time, the same on
//! every runtime. No key is needed to load it (its API calls need one);
//! no external font, script or style, and a CSP that allows none.

/// One file of the page.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Asset {
    pub(crate) path: &'static str,
    pub(crate) content_type: &'static str,
    pub(crate) body: &'static [u8],
}

const JS: &str = "text/javascript; charset=utf-8";

const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../../page/index.html"),
    },
    Asset {
        path: "/page.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../page/page.css"),
    },
    Asset {
        path: "/page.js",
        content_type: JS,
        body: include_bytes!("../../page/page.js"),
    },
    Asset {
        path: "/markdown.js",
        content_type: JS,
        body: include_bytes!("../../page/markdown.js"),
    },
    Asset {
        path: "/tokenedge.js",
        content_type: JS,
        body: include_bytes!("../../client/tokenedge.js"),
    },
];

/// Only the page's own files, and calls to its own origin.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The file served at `path`, if the page has one.
pub(crate) fn asset(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == path)
}

/// The headers every file of the page is served with.
pub(crate) fn headers(asset: &Asset) -> Vec<(String, String)> {
    [
        ("content-type", asset.content_type),
        ("content-security-policy", CSP),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        // Small, and changed with each deployment: checked every time.
        ("cache-control", "no-cache"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_the_page_loads_is_served() {
        let html = std::str::from_utf8(asset("/").unwrap().body).unwrap();
        for src in html
            .split(['"', '\''])
            .filter(|s| s.starts_with('/') && (s.ends_with(".js") || s.ends_with(".css")))
        {
            assert!(asset(src).is_some(), "{src}");
        }
        let page = std::str::from_utf8(asset("/page.js").unwrap().body).unwrap();
        for import in page.lines().filter_map(|l| l.split("from \"").nth(1)) {
            let path = import.split('"').next().unwrap();
            assert!(asset(path).is_some(), "{path}");
        }
        assert!(asset("/nothing.js").is_none());
    }

    #[test]
    fn nothing_from_elsewhere_and_no_inline_code() {
        for a in ASSETS {
            let text = std::str::from_utf8(a.body).unwrap();
            assert!(!text.contains("://"), "{} names another origin", a.path);
        }
        let html = std::str::from_utf8(asset("/").unwrap().body).unwrap();
        assert!(
            !html.contains("<script>") && !html.contains("<style") && !html.contains(" style=")
        );
        let handler = html.split(['<', ' ']).any(|w| {
            w.starts_with("on")
                && w[2..]
                    .split('=')
                    .next()
                    .is_some_and(|n| n.chars().all(|c| c.is_ascii_lowercase()))
                && w.contains('=')
        });
        assert!(!handler, "no inline handlers");
    }
}
