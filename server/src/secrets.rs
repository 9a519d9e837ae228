//! Secrets in file contents: credentials in the common token formats, private-key blocks anywhere
//! in a line, and high-entropy values assigned to names like `*_SECRET`, `*_TOKEN` or `password`.
//!
//! [`redact`] replaces each value with `<redacted:KIND>` and keeps everything else, line breaks
//! included, so line numbers and citations stay true. It runs where text enters kenning — reading a
//! workspace file (so nothing is stored, embedded or written to a dataset unredacted) and building a
//! completion prompt from an editor's buffers — and reports what it took out.

use std::sync::OnceLock;

use regex::Regex;

/// One value taken out.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Redaction {
    /// 1-based line of the value's start.
    pub line: u32,
    /// What it looked like (`aws-access-key`, `github-token`, ...).
    pub kind: &'static str,
}

/// Shortest value of a secret-named assignment that is redacted, and the least entropy (bits per
/// character) it must have: `password = "changeme"` or `token_type = "bearer"` stay.
const MIN_ASSIGNED_LEN: usize = 12;
const MIN_ASSIGNED_ENTROPY: f64 = 3.0;

struct Pattern {
    kind: &'static str,
    re: Regex,
    /// The capture group holding the value (0: the whole match).
    group: usize,
}

fn patterns() -> &'static [Pattern] {
    static PATTERNS: OnceLock<Vec<Pattern>> = OnceLock::new();
    PATTERNS.get_or_init(|| {
        let p = |kind, re: &str, group| Pattern { kind, re: Regex::new(re).expect("secret patterns are valid"), group };
        vec![
            // A private key: from its BEGIN line to its END line (or the end of the text), in a
            // file of its own or inside a string literal with `\n` escapes.
            p("private-key", r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----(?s:.*?)(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|\z)", 0),
            p("aws-access-key", r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b", 0),
            p("aws-secret-key", r#"(?i)aws.{0,24}?(?:secret|private).{0,24}?[=:]\s*["']?([A-Za-z0-9/+]{40})\b"#, 1),
            p("github-token", r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36,255}\b|\bgithub_pat_[A-Za-z0-9_]{22,255}\b", 0),
            p("gitlab-token", r"\bglpat-[A-Za-z0-9_\-]{20,}\b", 0),
            p("slack-token", r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b|https://hooks\.slack\.com/services/[A-Za-z0-9/_-]{20,}", 0),
            p("stripe-key", r"\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}\b", 0),
            p("google-api-key", r"\bAIza[0-9A-Za-z_\-]{35}\b", 0),
            p("jwt", r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}", 0),
            // `API_TOKEN = "…"`, `password: '…'`, `"client_secret": "…"`, `export DB_PASSWORD=…`.
            p(
                "assigned-secret",
                r#"(?i)[A-Za-z0-9_.-]*(?:secret|token|passwd|password|pwd|api_?key|apikey|private_?key|access_?key|auth_?key|credential)[A-Za-z0-9_]*["']?\s*(?::=|=>|[:=])\s*["'`]?([^\s"'`]+)"#,
                1,
            ),
        ]
    })
}

/// Shannon entropy of `s` in bits per character.
fn entropy(s: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in s.bytes() {
        counts[b as usize] += 1;
    }
    let n = s.len() as f64;
    counts.iter().filter(|&&c| c > 0).map(|&c| f64::from(c) / n).map(|p| -p * p.log2()).sum()
}

/// Whether a value assigned to a secret-like name is a real secret rather than code or a
/// placeholder: long, varied, letters and digits, and not an expression, a call, a template, a
/// variable name (`user_token_v2`, `MAX_TOKENS`) or an attribute path (`settings.api_key2`).
fn looks_assigned_secret(value: &str) -> bool {
    let value = value.trim_end_matches([',', ';', ')', '}', ']']);
    let snake = value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    let constant = value.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    let path = value.contains('.') && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
    value.len() >= MIN_ASSIGNED_LEN
        && entropy(value) >= MIN_ASSIGNED_ENTROPY
        && value.bytes().any(|b| b.is_ascii_digit())
        && value.bytes().any(|b| b.is_ascii_alphabetic())
        && !value.contains(['(', '{', '$', '<', '%', '[', '\\'])
        && !value.starts_with("http")
        && !(snake && value.contains('_'))
        && !constant
        && !path
}

/// Takes the secrets out of `text`; returns what was taken out. Unchanged text allocates nothing.
pub fn redact(text: &mut String) -> Vec<Redaction> {
    let mut spans: Vec<(usize, usize, &'static str)> = Vec::new();
    for pattern in patterns() {
        for caps in pattern.re.captures_iter(text) {
            let Some(m) = caps.get(pattern.group) else { continue };
            if pattern.kind == "assigned-secret" && !looks_assigned_secret(m.as_str()) {
                continue;
            }
            let end = if pattern.kind == "assigned-secret" { m.start() + m.as_str().trim_end_matches([',', ';', ')', '}', ']']).len() } else { m.end() };
            spans.push((m.start(), end, pattern.kind));
        }
    }
    if spans.is_empty() {
        return Vec::new();
    }
    // Earlier first; of overlapping spans the first (the more specific pattern) wins.
    spans.sort_by_key(|&(start, end, _)| (start, std::cmp::Reverse(end)));
    let mut kept: Vec<(usize, usize, &'static str)> = Vec::new();
    for span in spans {
        match kept.last_mut() {
            Some(last) if span.0 < last.1 => last.1 = last.1.max(span.1),
            _ => kept.push(span),
        }
    }
    let mut out = String::with_capacity(text.len());
    let mut redactions = Vec::new();
    let mut at = 0;
    for (start, end, kind) in kept {
        out.push_str(&text[at..start]);
        let line = text[..start].matches('\n').count() as u32 + 1;
        redactions.push(Redaction { line, kind });
        out.push_str(&format!("<redacted:{kind}>"));
        // Line breaks inside the value stay (a key block keeps its line count).
        for _ in text[start..end].matches('\n') {
            out.push('\n');
        }
        at = end;
    }
    out.push_str(&text[at..]);
    *text = out;
    redactions
}

/// [`redact`] on a copy, for text that is borrowed.
pub fn redacted(text: &str) -> (std::borrow::Cow<'_, str>, usize) {
    let mut owned = text.to_owned();
    let found = redact(&mut owned);
    if found.is_empty() { (std::borrow::Cow::Borrowed(text), 0) } else { (std::borrow::Cow::Owned(owned), found.len()) }
}

/// `text` as it stands after `before` in a file (a completion after the code it completes), with
/// the secrets of the whole taken out: one that only the name in `before` makes a secret
/// (`API_TOKEN = "` then the value) or that starts in `before` goes too. Where a secret spans the
/// cut, the continuation starts at its placeholder.
pub fn redacted_continuation(before: &str, text: &str) -> String {
    let mut whole = format!("{before}{text}");
    if redact(&mut whole).is_empty() {
        return text.to_owned();
    }
    let (head, _) = redacted(before);
    let common: usize = whole.chars().zip(head.chars()).take_while(|(a, b)| a == b).map(|(a, _)| a.len_utf8()).sum();
    whole.split_off(common)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> (String, Vec<&'static str>) {
        let mut t = text.to_owned();
        let found = redact(&mut t);
        assert_eq!(t.matches('\n').count(), text.matches('\n').count(), "line count kept: {t}");
        (t, found.into_iter().map(|r| r.kind).collect())
    }

    #[test]
    fn every_common_format_is_redacted() {
        let cases = [
            ("AWS_ACCESS_KEY_ID = 'AKIAIOSFODNN7EXAMPLE'\n", "aws-access-key", "AKIAIOSFODNN7EXAMPLE"),
            ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n", "aws-secret-key", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
            ("token = \"ghp_16C7e42F292c6912E7710c838347Ae178B4a\"\n", "github-token", "ghp_16C7e42F292c6912E7710c838347Ae178B4a"),
            ("GITLAB = 'glpat-xZ1y2Wv3u4T5s6R7q8P9'\n", "gitlab-token", "glpat-xZ1y2Wv3u4T5s6R7q8P9"),
            ("slack = \"xoxb-1234567890-0987654321-AbCdEfGhIjKl\"\n", "slack-token", "xoxb-1234567890"),
            ("stripe.api_key = \"sk_live_4eC39HqLyjWDarjtT1zdp7dc\"\n", "stripe-key", "sk_live_4eC39HqLyjWDarjtT1zdp7dc"),
            ("const key = 'AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q';\n", "google-api-key", "AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q"),
            ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U\n", "jwt", "eyJhbGciOiJIUzI1NiJ9"),
            ("DB_PASSWORD = \"x9Vq2LmZ7tRb4Kp\"\n", "assigned-secret", "x9Vq2LmZ7tRb4Kp"),
            ("{\"client_secret\": \"8f3kQ9z2LmV7xR4tWb1N\"}\n", "assigned-secret", "8f3kQ9z2LmV7xR4tWb1N"),
            ("export API_TOKEN=Zx81kq0PLm2vB7wq9Rt\n", "assigned-secret", "Zx81kq0PLm2vB7wq9Rt"),
        ];
        for (text, kind, value) in cases {
            let (out, found) = kinds(text);
            assert_eq!(found, [kind], "{text}");
            assert!(!out.contains(value), "{out}");
            assert!(out.contains(&format!("<redacted:{kind}>")), "{out}");
        }
    }

    #[test]
    fn private_keys_anywhere_in_a_line_keep_their_line_count() {
        let pem = "KEY = \"\"\"-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA1x2y3z\nabcdefghij\n-----END RSA PRIVATE KEY-----\"\"\"\nnext = 1\n";
        let (out, found) = kinds(pem);
        assert_eq!(found, ["private-key"]);
        assert_eq!(out, "KEY = \"\"\"<redacted:private-key>\n\n\n\"\"\"\nnext = 1\n");
        let escaped = "const KEY: &str = \"-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBg\\n-----END PRIVATE KEY-----\\n\";\n";
        let (out, found) = kinds(escaped);
        assert_eq!(found, ["private-key"]);
        assert!(!out.contains("MIIEvQ"), "{out}");
        let cut = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n";
        assert!(!kinds(cut).0.contains("b3Blbn"));
    }

    #[test]
    fn look_alikes_stay() {
        for text in [
            "password = input(\"Password: \")\n",
            "let password_hash = hash(&password);\n",
            "token_type = \"bearer\"\n",
            "SECRET_NAME = \"database-password\"\n",
            "fn get_token(&self) -> Option<&str> { self.token.as_deref() }\n",
            "prefix = \"ghp_\"\n",
            "if key.starts_with(\"sk_live_\") {\n",
            "commit = \"3f2a9c1d8e7b6a5f4e3d2c1b0a9f8e7d6c5b4a39\"\n",
            "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA\n-----END PUBLIC KEY-----\n",
            "api_key = os.environ[\"API_KEY\"]\n",
            "password: ${{ secrets.DB_PASSWORD }}\n",
            "let token = tokens.next().unwrap_or_default();\n",
            "access_key = config.aws.access_key_id\n",
            "auth_token_url = \"https://example.com/oauth2/token\"\n",
            "MAX_TOKENS = 4096\n",
        ] {
            let (out, found) = kinds(text);
            assert!(found.is_empty(), "{text:?} was redacted: {out}");
            assert_eq!(out, text);
        }
    }

    #[test]
    fn a_continuation_loses_the_secrets_its_line_makes_it_part_of() {
        // The name is typed, the value is what follows: alone it is just a random-looking string.
        let before = "import os\nAPI_TOKEN = \"";
        let value = "Zx81kq0PLm2vB7wq9Rt3\"\nnext()";
        assert_eq!(redacted(value).1, 0, "alone, the value is no secret");
        let out = redacted_continuation(before, value);
        assert!(!out.contains("Zx81kq0PLm2vB7wq9Rt3"), "{out}");
        assert_eq!(out, "<redacted:assigned-secret>\"\nnext()");
        // A key started before the cut: the continuation starts at its placeholder.
        let out = redacted_continuation("key = 'AKIAIOSFOD", "NN7EXAMPLE'\n");
        assert!(!out.contains("NN7EXAMPLE") && out.starts_with("<redacted:aws-access-key>"), "{out}");
        // A secret of its own, and nothing to take out.
        assert_eq!(redacted_continuation("x = ", "'AKIAIOSFODNN7EXAMPLE'"), "'<redacted:aws-access-key>'");
        assert_eq!(redacted_continuation("let total = ", "price(cart);"), "price(cart);");
    }

    #[test]
    fn lines_of_redactions_are_reported() {
        let mut text = "a = 1\nb = 2\nkey = 'AKIAIOSFODNN7EXAMPLE'\n".to_owned();
        assert_eq!(redact(&mut text), [Redaction { line: 3, kind: "aws-access-key" }]);
        let (same, n) = redacted("nothing here\n");
        assert!(matches!(same, std::borrow::Cow::Borrowed(_)) && n == 0);
    }
}
