//! Text that came from other peers (trap messages, agent strings, protocol versions,
//! addresses), made safe to print: `status`, `peers` and the job summary pass every
//! such string through [`shown`] before it reaches a terminal.

/// The most characters of one peer-supplied string that are printed.
pub(super) const MAX_SHOWN: usize = 200;

/// `text` with every control character (C0, DEL, C1) and every bidirectional
/// override escaped as `\u{..}` (so a peer cannot move the cursor, recolour, clear
/// the screen or reorder what follows), cut to at most `max` characters of output,
/// ending in `…` when cut.
pub(super) fn shown(text: &str, max: usize) -> String {
    // Pieces (a character or its escape) while they fit in `max`; one more
    // than fits means the text is cut, and pieces go until `…` fits too.
    let mut pieces: Vec<(String, usize)> = Vec::new();
    let mut count = 0;
    let mut cut = false;
    for c in text.chars() {
        let piece = if c.is_control() || is_bidi_control(c) {
            format!("\\u{{{:x}}}", c as u32)
        } else {
            c.to_string()
        };
        let len = piece.chars().count();
        if count + len > max {
            cut = true;
            break;
        }
        count += len;
        pieces.push((piece, len));
    }
    if cut {
        while count + 1 > max {
            let Some((_, len)) = pieces.pop() else { break };
            count -= len;
        }
    }
    let mut out: String = pieces.into_iter().map(|(p, _)| p).collect();
    if cut && max > 0 {
        out.push('…');
    }
    out
}

/// Unicode's bidirectional formatting characters (embeddings, overrides, isolates
/// and marks): they reorder the text around them on screen.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{061c}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// [`shown`] with the default cap.
pub(super) fn peer_text(text: &str) -> String {
    shown(text, MAX_SHOWN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ansi_escapes_are_escaped_not_interpreted() {
        let trap = "unreachable\x1b[2J\x1b[31mowned\x07\r\n\u{202e}txt.exe";
        let out = peer_text(trap);
        assert!(
            !out.chars().any(|c| c.is_control() || is_bidi_control(c)),
            "{out:?}"
        );
        assert_eq!(
            out,
            "unreachable\\u{1b}[2J\\u{1b}[31mowned\\u{7}\\u{d}\\u{a}\\u{202e}txt.exe"
        );
    }

    #[test]
    fn long_strings_are_capped() {
        let long = "a".repeat(10_000);
        let out = peer_text(&long);
        assert_eq!(out.chars().count(), MAX_SHOWN);
        assert!(out.ends_with('…'));
        // Escapes count toward the cap and are never cut in half.
        let escapes = "\x1b".repeat(10_000);
        let out = peer_text(&escapes);
        assert!(out.chars().count() <= MAX_SHOWN);
        assert!(out.trim_end_matches('…').ends_with("\\u{1b}"), "{out}");
    }

    #[test]
    fn ordinary_text_is_unchanged() {
        for s in [
            "",
            "peergrid/0.1.0",
            "trap (unreachable): wasm `unreachable` — ünïcode",
        ] {
            assert_eq!(peer_text(s), s);
        }
        assert_eq!(shown("abcdef", 6), "abcdef");
        assert_eq!(shown("abcdefg", 6), "abcde…");
    }
}
