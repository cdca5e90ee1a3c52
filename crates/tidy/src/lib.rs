//! Ember's house rules as checks: `tests/tidy.rs` runs them over the repository on every
//! `cargo test`, so that the rules hold because a test fails, not because people remember.
//!
//! The rules themselves (file headers, where `unsafe` may live, no ignored tests, a code-map
//! section per crate, dependencies declared once by the workspace) are in the test, each with
//! the reason it exists. This library holds what they need of Rust's syntax: [`code_only`], the
//! text of a source file with its comments and literals blanked out, so that a word found in it
//! is code.

#![forbid(unsafe_code)]

/// `source` with every comment and the contents of every string, byte-string and character
/// literal replaced by spaces, keeping line breaks, so that the lines of the result are the
/// lines of the source and a word found in it is a word of code.
///
/// It knows what Rust's lexer knows about where comments and literals end: nested block
/// comments, escapes, raw strings (`r#"…"#`, `br"…"`, `cr"…"`), and the difference between a
/// character literal (`'a'`, `'\''`) and a lifetime or label (`'a`). A source that does not
/// lex (an unterminated literal) is blanked to its end.
pub fn code_only(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut out: Vec<char> = Vec::with_capacity(chars.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let end = if c == '/' && next == Some('/') {
            line_comment_end(&chars, i)
        } else if c == '/' && next == Some('*') {
            block_comment_end(&chars, i)
        } else if c == '"' {
            quoted_end(&chars, i, '"')
        } else if c == '\'' {
            match char_literal_end(&chars, i) {
                Some(end) => end,
                None => {
                    out.push(c);
                    i += 1;
                    continue;
                }
            }
        } else if is_ident_start(c) {
            let word_end = ident_end(&chars, i);
            let word: String = chars[i..word_end].iter().collect();
            out.extend_from_slice(&chars[i..word_end]);
            i = word_end;
            if matches!(word.as_str(), "r" | "br" | "cr") {
                if let Some(end) = raw_string_end(&chars, i) {
                    blank(&chars[i..end], &mut out);
                    i = end;
                }
            } else if word == "b" && chars.get(i) == Some(&'\'') {
                if let Some(end) = char_literal_end(&chars, i) {
                    blank(&chars[i..end], &mut out);
                    i = end;
                }
            }
            continue;
        } else {
            out.push(c);
            i += 1;
            continue;
        };
        blank(&chars[i..end], &mut out);
        i = end;
    }
    out.into_iter().collect()
}

/// Pushes `span` as spaces, keeping its line breaks.
fn blank(span: &[char], out: &mut Vec<char>) {
    out.extend(span.iter().map(|&c| if c == '\n' { '\n' } else { ' ' }));
}

fn is_ident_start(c: char) -> bool {
    c.is_alphabetic() || c == '_'
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn ident_end(chars: &[char], start: usize) -> usize {
    let mut i = start;
    while i < chars.len() && is_ident_char(chars[i]) {
        i += 1;
    }
    i
}

/// The end of the `//` comment at `start`: its line break, which stays.
fn line_comment_end(chars: &[char], start: usize) -> usize {
    let mut i = start;
    while i < chars.len() && chars[i] != '\n' {
        i += 1;
    }
    i
}

/// The end of the `/*` comment at `start`, past its `*/`; block comments nest.
fn block_comment_end(chars: &[char], start: usize) -> usize {
    let mut depth = 0usize;
    let mut i = start;
    while i < chars.len() {
        match (chars[i], chars.get(i + 1)) {
            ('/', Some('*')) => {
                depth += 1;
                i += 2;
            }
            ('*', Some('/')) => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return i;
                }
            }
            _ => i += 1,
        }
    }
    chars.len()
}

/// The end of the literal opened by `quote` at `start`, past its closing quote; a backslash
/// escapes the character after it.
fn quoted_end(chars: &[char], start: usize, quote: char) -> usize {
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    chars.len()
}

/// The end of a character literal at `start` (a `'`), or `None` if the quote opens a lifetime
/// or a label: `'a'` and `'\n'` are literals, `'a` and `'static` are not.
fn char_literal_end(chars: &[char], start: usize) -> Option<usize> {
    match (chars.get(start + 1), chars.get(start + 2)) {
        (Some('\\'), _) => Some(quoted_end(chars, start, '\'')),
        (Some(_), Some('\'')) => Some(start + 3),
        _ => None,
    }
}

/// The end of a raw string whose `r` prefix ends just before `start` (`#…#"…"#…#`), or `None`
/// if what follows is not one (a raw identifier such as `r#type`, or an ordinary word).
fn raw_string_end(chars: &[char], start: usize) -> Option<usize> {
    let mut i = start;
    while chars.get(i) == Some(&'#') {
        i += 1;
    }
    if chars.get(i) != Some(&'"') {
        return None;
    }
    let hashes = i - start;
    i += 1;
    while i < chars.len() {
        if chars[i] == '"'
            && chars[i + 1..]
                .iter()
                .take(hashes)
                .filter(|&&c| c == '#')
                .count()
                == hashes
        {
            return Some(i + 1 + hashes);
        }
        i += 1;
    }
    Some(chars.len())
}

/// Whether `word` occurs in `line` as a whole word of code (not part of a longer identifier).
pub fn has_word(line: &str, word: &str) -> bool {
    line.match_indices(word).any(|(at, _)| {
        let before = line[..at].chars().next_back();
        let after = line[at + word.len()..].chars().next();
        !before.is_some_and(is_ident_char) && !after.is_some_and(is_ident_char)
    })
}

#[cfg(test)]
mod tests {
    use super::{code_only, has_word};

    /// Each source, and the words of code `code_only` leaves of it.
    #[test]
    fn comments_and_literals_are_blanked_and_code_is_kept() {
        let cases: &[(&str, &str)] = &[
            ("let x = 1; // unsafe here", "let x = 1;"),
            ("/* unsafe /* nested */ still comment */ fn f()", "fn f()"),
            ("//! unsafe docs\nunsafe { f() }", "unsafe { f() }"),
            (r#"let s = "unsafe \" unsafe"; g()"#, "let s =  ; g()"),
            (
                r###"let s = r#"unsafe " unsafe"#; g()"###,
                "let s = r ; g()",
            ),
            (r#"let s = br"unsafe"; g()"#, "let s = br ; g()"),
            (r#"let s = c"unsafe"; g()"#, "let s = c ; g()"),
            ("let c = '\"'; unsafe { f() }", "let c =  ; unsafe { f() }"),
            ("let c = '\\''; unsafe { f() }", "let c =  ; unsafe { f() }"),
            (
                "let b = b'\"'; unsafe { f() }",
                "let b = b ; unsafe { f() }",
            ),
            (
                "fn f<'a>(x: &'a str) -> &'a str { x }",
                "fn f<'a>(x: &'a str) -> &'a str { x }",
            ),
            (
                "'outer: loop { break 'outer; }",
                "'outer: loop { break 'outer; }",
            ),
            (
                "let r#type = 1; unsafe { f() }",
                "let r#type = 1; unsafe { f() }",
            ),
            ("let s = \"unterminated unsafe", "let s ="),
        ];
        for (source, want) in cases {
            let got = code_only(source);
            assert_eq!(got.chars().count(), source.chars().count(), "{source}");
            let words = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
            assert_eq!(words(&got), words(want), "{source}");
        }
    }

    #[test]
    fn line_breaks_stay_where_they_were() {
        let source = "a /* x\ny */ b\n\"s\nt\" c\n// d\ne";
        let got = code_only(source);
        let lines: Vec<&str> = got.lines().map(str::trim).collect();
        assert_eq!(lines, ["a", "b", "", "c", "", "e"]);
    }

    #[test]
    fn whole_words_only() {
        assert!(has_word("unsafe { f() }", "unsafe"));
        assert!(has_word("x(unsafe)", "unsafe"));
        assert!(!has_word("#![deny(unsafe_code)]", "unsafe"));
        assert!(!has_word("is_unsafe()", "unsafe"));
        assert!(has_word("#[ignore]", "ignore"));
        assert!(!has_word("#[ignored_attr]", "ignore"));
    }
}
