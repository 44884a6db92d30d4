//! Date spans REALM masks as salient: full dates ("14 December 1972", "December 14, 1972",
//! "1996-08-22"), month and year ("December 1972"), day and month, decades ("1990s"), years
//! (1000–2099) and month names.

use std::sync::LazyLock;

use regex::Regex;

const MONTHS: &str =
    "January|February|March|April|May|June|July|August|September|October|November|December";

/// One pattern, longest forms first: the regex engine takes the first alternative that matches
/// at the leftmost position, so "14 December 1972" is one span, not three.
static DATE: LazyLock<Regex> = LazyLock::new(|| {
    let m = MONTHS;
    let forms = [
        format!(r"\d{{1,2}} (?:{m}),? \d{{3,4}}"),
        format!(r"(?:{m}) \d{{1,2}}, \d{{3,4}}"),
        r"\d{4}-\d{2}-\d{2}".to_string(),
        format!(r"(?:{m}) \d{{3,4}}"),
        format!(r"\d{{1,2}} (?:{m})"),
        format!(r"(?:{m}) \d{{1,2}}"),
        r"1\d{2}0s|20\d0s".to_string(),
        r"1\d{3}|20\d{2}".to_string(),
        format!(r"(?:{m})"),
    ];
    Regex::new(&format!(r"\b(?:{})\b", forms.join("|"))).expect("static date pattern")
});

/// Byte ranges of the date expressions in `text`, in order, not overlapping.
pub fn date_spans(text: &str) -> Vec<(usize, usize)> {
    DATE.find_iter(text).map(|m| (m.start(), m.end())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(text: &str) -> Vec<&str> {
        date_spans(text).iter().map(|&(s, e)| &text[s..e]).collect()
    }

    #[test]
    fn finds_dates_longest_first() {
        assert_eq!(
            found("Apollo 17 landed on 11 December 1972 and left on December 14, 1972."),
            ["11 December 1972", "December 14, 1972"]
        );
        assert_eq!(
            found("In March 1815 Napoleon returned; by the 1990s, in 2004 and 1066 AD."),
            ["March 1815", "1990s", "2004", "1066"]
        );
        assert_eq!(found("BRUSSELS 1996-08-22"), ["1996-08-22"]);
        assert_eq!(found("on 4 July, and on May 5"), ["4 July", "May 5"]);
        assert_eq!(found("It opened in June."), ["June"]);
    }

    #[test]
    fn ignores_numbers_that_are_not_years() {
        assert!(found("He scored 12345 points, 17 goals, 3000 runs and 999 more.").is_empty());
        assert!(found("Route 2100 and mayonnaise").is_empty());
        assert!(found("a1999 and 1999b").is_empty());
    }
}
