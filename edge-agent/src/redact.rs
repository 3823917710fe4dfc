//! Redaction of LLM prompt and completion text before it may leave the host
//! (only for workloads whose tenant policy asks for `llm_content: redacted`).
//!
//! Invariants:
//! - Conservative: a word that looks like a secret or personal identifier is
//!   replaced whole by [`MARK`]; when in doubt, redact. What is kept is
//!   ordinary prose.
//! - Bounded: the result is at most [`MAX_TEXT`] bytes (cut at a character
//!   boundary, marked with `…`).

pub const MARK: &str = "[REDACTED]";
pub const MAX_TEXT: usize = 4096;

/// Well-known credential prefixes (OpenAI, Anthropic, Stripe, Slack, GitHub,
/// AWS, Google, JWTs).
const SECRET_PREFIXES: &[&str] = &[
    "sk-",
    "sk_",
    "pk_",
    "rk_",
    "xoxb-",
    "xoxp-",
    "ghp_",
    "gho_",
    "ghs_",
    "github_pat_",
    "AKIA",
    "ASIA",
    "AIza",
    "eyJ",
];

fn secret_like(word: &str) -> bool {
    let w = word.trim_matches(|c: char| !c.is_alphanumeric() && c != '@' && c != '+');
    if w.is_empty() {
        return false;
    }
    // An e-mail address.
    if let Some((user, domain)) = w.split_once('@') {
        if !user.is_empty() && domain.contains('.') {
            return true;
        }
    }
    if SECRET_PREFIXES
        .iter()
        .any(|p| w.starts_with(p) && w.len() >= p.len() + 8)
    {
        return true;
    }
    // Card, account, phone and identity numbers: nine or more digits.
    if w.chars().filter(char::is_ascii_digit).count() >= 9
        && w.chars().all(|c| c.is_ascii_digit() || "-+().".contains(c))
    {
        return true;
    }
    // Long mixed tokens: keys, hashes, session ids.
    w.len() >= 24
        && w.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_+/=.".contains(c))
        && w.chars().any(|c| c.is_ascii_digit())
        && w.chars().any(|c| c.is_ascii_alphabetic())
}

/// `text` with secret-looking words replaced, at most [`MAX_TEXT`] bytes.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_TEXT));
    let mut after_bearer = false;
    for (i, word) in text.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        // Keep line breaks: redact each line's words separately.
        let mut first = true;
        for part in word.split('\n') {
            if !first {
                out.push('\n');
            }
            first = false;
            if after_bearer || secret_like(part) {
                out.push_str(MARK);
                after_bearer = false;
            } else {
                out.push_str(part);
                after_bearer = part.eq_ignore_ascii_case("bearer");
            }
        }
    }
    if out.len() > MAX_TEXT {
        let mut cut = MAX_TEXT - '…'.len_utf8();
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_and_identifiers_are_redacted_prose_is_kept() {
        let got = redact(
            "Email jane.doe@example.com about key sk-proj-abcdefghijklmnop, card 4111-1111-1111-1111,\n\
             header Authorization: Bearer abc.def.ghi and token ghp_0123456789abcdefghij; say hi",
        );
        assert_eq!(
            got,
            "Email [REDACTED] about key [REDACTED] card [REDACTED]\n\
             header Authorization: Bearer [REDACTED] and token [REDACTED] say hi"
        );
        assert_eq!(
            redact("the year 2024 had 365 days"),
            "the year 2024 had 365 days"
        );
        assert_eq!(
            redact("session 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822c"),
            "session [REDACTED]"
        );
    }

    #[test]
    fn output_is_bounded_at_a_character_boundary() {
        let long = "é".repeat(5000);
        let got = redact(&long);
        assert!(got.len() <= MAX_TEXT, "{}", got.len());
        assert!(got.ends_with('…'));
    }
}
