//! What a piece of text submitted to the platform looks like: which attack classes it carries
//! ([`classify`]: the seed's classification groups), how useful it is as a signal ([`quality`]), and
//! the fingerprint its duplicates share ([`fingerprint`]). Pure functions of the text, so a
//! submission's verdict is decided once, when it is recorded, and kept in its event.
//!
//! SQL injection and XSS are libinjection's verdicts (its tokenizer, as WAFs use it); the other groups
//! are rules over the text and its percent-decoded form, written for what probes send rather than for
//! what a user could mean. The product's own template syntax, `{{variable}}`, is not a template probe.

use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

/// An attack class, as the seed names them.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ProbeGroup {
    /// Cross-site scripting.
    Script,
    /// Shell command injection.
    Command,
    /// SQL injection.
    Sql,
    /// Server-side template or expression injection.
    Template,
    /// Path traversal and local file access.
    Path,
    /// Format strings, control characters, overlong or random input.
    Fuzz,
}

impl ProbeGroup {
    pub const ALL: [ProbeGroup; 6] = [
        ProbeGroup::Script,
        ProbeGroup::Command,
        ProbeGroup::Sql,
        ProbeGroup::Template,
        ProbeGroup::Path,
        ProbeGroup::Fuzz,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProbeGroup::Script => "script",
            ProbeGroup::Command => "command",
            ProbeGroup::Sql => "sql",
            ProbeGroup::Template => "template",
            ProbeGroup::Path => "path",
            ProbeGroup::Fuzz => "fuzz",
        }
    }

    pub fn parse(text: &str) -> Option<ProbeGroup> {
        ProbeGroup::ALL.into_iter().find(|g| g.as_str() == text)
    }
}

/// How useful a submission is to the people who triage it, as the seed names the categories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Quality {
    /// An opinion or observation with nothing to act on directly.
    ProductSignal,
    /// Short and asking for something (at most [`SHORT`] characters).
    ShortActionable,
    /// Asking for something, at length.
    Actionable,
    /// Carries an attack class.
    SecurityProbe,
}

impl Quality {
    pub const ALL: [Quality; 4] = [
        Quality::ProductSignal,
        Quality::ShortActionable,
        Quality::Actionable,
        Quality::SecurityProbe,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Quality::ProductSignal => "product_signal",
            Quality::ShortActionable => "short_actionable",
            Quality::Actionable => "actionable",
            Quality::SecurityProbe => "security_probe",
        }
    }

    pub fn parse(text: &str) -> Option<Quality> {
        Quality::ALL.into_iter().find(|q| q.as_str() == text)
    }
}

/// The longest text, in characters, that is `short_actionable` rather than `actionable`.
pub const SHORT: usize = 140;

/// The attack classes `text` carries, in [`ProbeGroup::ALL`]'s order; empty for ordinary text.
pub fn classify(text: &str) -> Vec<ProbeGroup> {
    let decoded = percent_decoded(text);
    let forms: Vec<&str> = match &decoded {
        Some(decoded) => vec![text, decoded],
        None => vec![text],
    };
    ProbeGroup::ALL
        .into_iter()
        .filter(|group| forms.iter().any(|form| carries(*group, form)))
        .collect()
}

fn carries(group: ProbeGroup, text: &str) -> bool {
    match group {
        ProbeGroup::Script => {
            libinjectionrs::detect_xss(text.as_bytes()).is_injection() || SCRIPT.is_match(text)
        }
        ProbeGroup::Sql => {
            libinjectionrs::detect_sqli(text.as_bytes()).is_injection()
                || text
                    .lines()
                    .filter(|line| line.len() < text.len())
                    .any(|line| libinjectionrs::detect_sqli(line.as_bytes()).is_injection())
        }
        ProbeGroup::Command => COMMAND.iter().any(|rule| rule.is_match(text)),
        ProbeGroup::Template => is_template_probe(text),
        ProbeGroup::Path => PATH.is_match(text),
        ProbeGroup::Fuzz => is_fuzz(text),
    }
}

/// Script that libinjection's HTML parser does not see as markup: script URLs and event handlers.
static SCRIPT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)(\b(java|vb)script\s*:|\bdata\s*:\s*text/html|\bon(error|load|mouseover|focus|click)\s*=|<\s*script\b|document\.cookie|\balert\s*\(\s*(document|1|'|`))").unwrap()
});

/// A shell command after a separator, a substitution, or a pipe into a shell.
static COMMAND: LazyLock<Vec<Regex>> = LazyLock::new(|| {
    const COMMANDS: &str = r"(cat|ls|id|whoami|uname|wget|curl|nc|ncat|netcat|bash|sh|zsh|rm|ping|nslookup|sleep|echo|python[23]?|perl|ruby|php|powershell|cmd(\.exe)?|chmod|chown|telnet|ifconfig|ipconfig|net\s+user)";
    [
        format!(r"(?i)(;|&|\||\n|%0a)\s*{COMMANDS}(\s|$|[;&|<>])"),
        format!(r"(?i)`\s*{COMMANDS}\b[^`]*`"),
        format!(r"(?i)\$\(\s*{COMMANDS}\b[^)]*\)"),
        r"\$\{IFS\}|\$IFS\b".to_owned(),
        r"(?i)/bin/(ba|z|da)?sh\b|\bcmd(\.exe)?\s+/c\b".to_owned(),
    ]
    .iter()
    .map(|rule| Regex::new(rule).unwrap())
    .collect()
});

/// Template and expression-language syntax other than the product's `{{variable}}`.
static TEMPLATE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)(\$\{|#\{|<%|\{%|\{\{\s*[^}]*[^\w\s.}\-][^}]*\}\}|__(class|globals|mro|subclasses|builtins|import|init)__|\bconstructor\.constructor\b|\bjndi\s*:)").unwrap()
});

/// `{{` with anything but a variable name inside (`{{7*7}}`, `{{config.items()}}`, `{{''.__class__}}`).
fn is_template_probe(text: &str) -> bool {
    TEMPLATE.is_match(text)
}

/// Relative traversal (plain, encoded or doubled), well-known system files and local file URLs.
static PATH: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)(\.\.[/\\]|[/\\]\.\.($|[/\\])|%2e%2e|\.\.%2f|\.\.%5c|%252e|\.\.;/|/etc/(passwd|shadow|hosts|group)\b|/proc/self/|[a-z]:\\windows\\|\bwin\.ini\b|\bboot\.ini\b|\bfile:///|%00|\\x00)").unwrap()
});

/// Printf-style conversions that read or write memory.
static FORMAT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"%(\d+\$)?[-+ #0-9.]*(n|s|x|p|d)").unwrap());

/// Format strings, control characters, overlong tokens, long runs of one character, and text that is
/// a third or more unusual symbols (or has no letters or digits at all).
fn is_fuzz(text: &str) -> bool {
    let format_strings = FORMAT.find_iter(text).count();
    if format_strings >= 3 || (text.contains("%n") && format_strings >= 2) {
        return true;
    }
    if text
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return true;
    }
    // One word of more than 120 characters, between spaces and the separators of paths, queries and
    // JSON (so a long URL or a compact JSON body is not one).
    if text
        .split(|c: char| c.is_whitespace() || "\"{}[]:,/?&=".contains(c))
        .any(|word| word.chars().count() > 120)
    {
        return true;
    }
    if longest_run(text) >= 40 {
        return true;
    }
    // Structured input (JSON, paths, queries, timestamps, ids) is mostly punctuation of these kinds;
    // random input is not.
    let structural = |c: char| "\"{}[]:,.-_/'?&@+()".contains(c);
    let (unusual, total, alphanumeric) = text.chars().filter(|c| !c.is_whitespace()).fold(
        (0usize, 0usize, 0usize),
        |(unusual, total, alphanumeric), c| {
            (
                unusual + usize::from(!c.is_alphanumeric() && !structural(c)),
                total + 1,
                alphanumeric + usize::from(c.is_alphanumeric()),
            )
        },
    );
    total >= 16 && (unusual * 3 >= total || alphanumeric == 0)
}

/// The longest run of one repeated character.
fn longest_run(text: &str) -> usize {
    let mut longest = 0;
    let mut run = 0;
    let mut previous = None;
    for c in text.chars() {
        run = if Some(c) == previous { run + 1 } else { 1 };
        previous = Some(c);
        longest = longest.max(run);
    }
    longest
}

/// The text with `%XX` escapes decoded once (as a server decoding a query would), when it has any.
fn percent_decoded(text: &str) -> Option<String> {
    if !text.contains('%') {
        return None;
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    let mut changed = false;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((high * 16 + low) as u8);
                i += 3;
                changed = true;
                continue;
            }
        }
        if bytes[i] == b'+' {
            out.push(b' ');
        } else {
            out.push(bytes[i]);
        }
        i += 1;
    }
    changed.then(|| String::from_utf8_lossy(&out).into_owned())
}

/// Words that ask for something: a fault to fix, a change to make.
static ACTIONABLE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(fix|fixed|broken|bug|bugs|error|errors|crash|crashes|crashed|fail|fails|failed|failing|failure|can't|cannot|can not|unable|doesn't|does not|don't|won't|isn't|not working|stopped working|please|should|add|allow|support|missing|need|needs|would like|wish|slow|timeout|times out|wrong|incorrect|instead|expected|cannot|let me|option to)\b").unwrap()
});

/// The signal quality of a submission: a probe if it carries any attack class; otherwise actionable
/// when it asks for something (short or not), and a product signal when it does not.
pub fn quality(text: &str, groups: &[ProbeGroup]) -> Quality {
    if !groups.is_empty() {
        Quality::SecurityProbe
    } else if ACTIONABLE.is_match(text) {
        if text.chars().count() <= SHORT {
            Quality::ShortActionable
        } else {
            Quality::Actionable
        }
    } else {
        Quality::ProductSignal
    }
}

static EMAIL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[\w.+-]+@[\w-]+(\.[\w-]+)+").unwrap());
static URL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)\b[a-z][a-z0-9+.-]*://\S+").unwrap());
/// UUIDs and long hexadecimal ids (with at least one digit, so plain words stay).
static ID: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]*[0-9][0-9a-f]*[a-f][0-9a-f]*|[0-9a-f]*[a-f][0-9a-f]*[0-9][0-9a-f]*)\b").unwrap()
});
static NUMBER: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\d+").unwrap());

/// The text as duplicates share it: lower case, one space for any whitespace, and emails, URLs, ids
/// and numbers masked (`<email>`, `<url>`, `<id>`, `<n>`).
pub fn normalised(text: &str) -> String {
    let text = text.to_lowercase();
    let text = EMAIL.replace_all(&text, "<email>");
    let text = URL.replace_all(&text, "<url>");
    let text = ID.replace_all(&text, |found: &regex::Captures| {
        if found[0].len() >= 8 {
            "<id>".to_owned()
        } else {
            found[0].to_owned()
        }
    });
    let text = NUMBER.replace_all(&text, "<n>");
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The fingerprint duplicates share: 64-bit FNV-1a of the [`normalised`] text, in hex. Stable across
/// releases and machines, since it is kept in events and grouped on.
pub fn fingerprint(text: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in normalised(text).bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_products_own_variables_are_not_template_probes() {
        for text in [
            "The {{customer_name}} variable is not replaced in my prompt",
            "Hello {{ user.name }}, {{order-id}} is ready",
        ] {
            assert_eq!(classify(text), vec![], "{text}");
        }
        for text in [
            "{{7*7}}",
            "${7*7}",
            "{{''.__class__.__mro__}}",
            "${jndi:ldap://x/a}",
            "<%= 7*7 %>",
        ] {
            assert!(classify(text).contains(&ProbeGroup::Template), "{text}");
        }
    }

    #[test]
    fn duplicates_share_a_fingerprint_whatever_their_numbers_ids_and_case() {
        assert_eq!(
            fingerprint("Export failed for job 1234, contact a@b.io"),
            fingerprint("export FAILED for job 98,   contact other.person@example.com")
        );
        assert_eq!(
            fingerprint("see https://a.example/x?id=1 and 0193f1e2-aaaa-7bbb-8ccc-0123456789ab"),
            fingerprint("See http://b.example/ and 01930000-0000-7000-8000-000000000000")
        );
        assert_ne!(fingerprint("export failed"), fingerprint("import failed"));
        assert_eq!(fingerprint("a"), "af63dc4c8601ec8c");
    }

    #[test]
    fn quality_follows_the_documented_rules() {
        assert_eq!(quality("Love the new editor!", &[]), Quality::ProductSignal);
        assert_eq!(
            quality("Please add dark mode", &[]),
            Quality::ShortActionable
        );
        let long = format!(
            "The export page {} fails when I pick a date range",
            "x ".repeat(80)
        );
        assert_eq!(quality(&long, &[]), Quality::Actionable);
        assert_eq!(
            quality("please fix", &[ProbeGroup::Sql]),
            Quality::SecurityProbe
        );
    }

    #[test]
    fn percent_encoded_payloads_are_decoded_once() {
        assert!(classify("%2e%2e%2fetc%2fpasswd").contains(&ProbeGroup::Path));
        assert!(classify("q=%3Cscript%3Ealert(1)%3C/script%3E").contains(&ProbeGroup::Script));
        assert_eq!(classify("50% off, 100% sure"), vec![]);
    }
}
