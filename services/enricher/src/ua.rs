//! User-agent classification into the `browser`, `os` and `device` tags, through `woothee`
//! (rules compiled into the crate, no database to download), with a cache because a site's
//! traffic comes from a few hundred distinct user agents.

use std::collections::HashMap;
use std::sync::Arc;

use woothee::parser::Parser;

/// The tags one user agent yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UaTags {
    /// Browser family (`Chrome`, `Firefox`, `Safari`, `Edge`, ...) or crawler name.
    pub browser: String,
    /// OS family: `Windows`, `macOS`, `iOS`, `Android`, `Linux`, `ChromeOS`, ...
    pub os: String,
    /// `desktop`, `mobile`, `tablet`, `bot`, `console`, `other` or `unknown`.
    pub device: &'static str,
}

const UNKNOWN: &str = "UNKNOWN";

/// Classifies one user agent string.
pub fn classify(user_agent: &str) -> UaTags {
    let Some(result) = Parser::new().parse(user_agent) else {
        return UaTags {
            browser: "unknown".into(),
            os: "unknown".into(),
            device: "unknown",
        };
    };
    let browser = match result.name {
        "" | UNKNOWN => "unknown".to_owned(),
        name => name.to_owned(),
    };
    let os = os_family(result.os).to_owned();
    let device = match result.category {
        "pc" => "desktop",
        "smartphone" if is_tablet(result.os, user_agent) => "tablet",
        "smartphone" | "mobilephone" => "mobile",
        "crawler" => "bot",
        "appliance" => "console",
        "misc" => "other",
        _ => "unknown",
    };
    UaTags {
        browser,
        os,
        device,
    }
}

/// woothee names OS versions (`Windows 10`, `Mac OSX`, `iPhone`); dashboards want families.
fn os_family(os: &str) -> &str {
    match os {
        "" | UNKNOWN => "unknown",
        "Windows Phone OS" => "Windows Phone",
        "Mac OSX" | "Mac OS Classic" => "macOS",
        "iPhone" | "iPad" | "iPod" | "iOS" => "iOS",
        other if other.starts_with("Windows") => "Windows",
        other => other,
    }
}

/// Android tablets omit `Mobile` from their user agent (Google's guidance to browser vendors).
fn is_tablet(os: &str, user_agent: &str) -> bool {
    os == "iPad"
        || (os == "Android" && !user_agent.contains("Mobile"))
        || user_agent.contains("Tablet")
}

/// Bounded memo of [`classify`]; cleared when full, which is cheap and keeps memory flat against
/// a flood of random user agents.
#[derive(Debug)]
pub struct UaCache {
    entries: HashMap<String, Arc<UaTags>>,
    capacity: usize,
}

impl UaCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::with_capacity(capacity.min(1024)),
            capacity,
        }
    }

    pub fn get(&mut self, user_agent: &str) -> Arc<UaTags> {
        if let Some(tags) = self.entries.get(user_agent) {
            return Arc::clone(tags);
        }
        let tags = Arc::new(classify(user_agent));
        if self.capacity > 0 {
            if self.entries.len() >= self.capacity {
                self.entries.clear();
            }
            let _ = self
                .entries
                .insert(user_agent.to_owned(), Arc::clone(&tags));
        }
        tags
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn check(ua: &str, browser: &str, os: &str, device: &str) {
        let tags = classify(ua);
        assert_eq!(
            (tags.browser.as_str(), tags.os.as_str(), tags.device),
            (browser, os, device),
            "{ua}"
        );
    }

    #[test]
    fn major_browsers_and_platforms() {
        check(
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
            "Chrome",
            "Windows",
            "desktop",
        );
        check(
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 Edg/120.0.2210.91",
            "Edge",
            "Windows",
            "desktop",
        );
        check(
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:121.0) Gecko/20100101 Firefox/121.0",
            "Firefox",
            "macOS",
            "desktop",
        );
        check(
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 Safari/605.1.15",
            "Safari",
            "macOS",
            "desktop",
        );
        check(
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
            "Chrome",
            "Linux",
            "desktop",
        );
        check(
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 Mobile/15E148 Safari/604.1",
            "Safari",
            "iOS",
            "mobile",
        );
        check(
            "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1",
            "Safari",
            "iOS",
            "tablet",
        );
        check(
            "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36",
            "Chrome",
            "Android",
            "mobile",
        );
        check(
            "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
            "Chrome",
            "Android",
            "tablet",
        );
        check(
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            "Googlebot",
            "unknown",
            "bot",
        );
    }

    #[test]
    fn unusual_input_is_classified_not_rejected() {
        check("", "unknown", "unknown", "unknown");
        check("curl/8.5.0", "HTTP Library", "unknown", "other");
        let tags = classify("\u{0}garbage\u{ffff}");
        assert_eq!(tags.device, "unknown");
    }

    #[test]
    fn cache_is_bounded_and_consistent() {
        let mut cache = UaCache::new(2);
        let a = cache.get("curl/1");
        assert_eq!(*a, classify("curl/1"));
        let _ = cache.get("curl/2");
        let _ = cache.get("curl/3");
        assert!(cache.entries.len() <= 2);
        assert_eq!(*cache.get("curl/1"), classify("curl/1"));
        let mut off = UaCache::new(0);
        let _ = off.get("curl/1");
        assert!(off.entries.is_empty());
    }
}
