//! Paging of the list operations: the opaque `Marker` (base64url of the last row's key) and the
//! cut of a page from rows fetched one past `MaxItems`, so that every list answers `NextMarker`
//! the same way.

use base64::Engine;

use crate::error::ApiError;

/// Cuts a page from `rows`, fetched in order with one row more than `max_items` (the extra row
/// tells whether another page follows). Returns at most `max_items` rows and, when rows were
/// left over, the `NextMarker`: `marker_of` the page's last row.
pub(crate) fn paginate<T>(
    mut rows: Vec<T>,
    max_items: u32,
    marker_of: impl FnOnce(&T) -> String,
) -> (Vec<T>, Option<String>) {
    let max = max_items as usize;
    if rows.len() <= max {
        return (rows, None);
    }
    rows.truncate(max);
    let next_marker = rows.last().map(marker_of);
    (rows, next_marker)
}

/// The `Marker` of a row's key: base64url without padding, opaque to clients.
pub(crate) fn encode_marker(key: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key)
}

/// The key a `Marker` names; anything [`encode_marker`] did not make is `Invalid Marker`.
pub(crate) fn decode_marker(marker: &str) -> Result<String, ApiError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(marker)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| ApiError::InvalidParameter(format!("Invalid Marker: {marker}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::validate;

    fn page(rows: u32, max_items: u32) -> (Vec<u32>, Option<String>) {
        paginate((1..=rows).collect(), max_items, |n| n.to_string())
    }

    #[test]
    fn no_rows_is_an_empty_last_page() {
        assert_eq!(page(0, 50), (vec![], None));
    }

    #[test]
    fn rows_up_to_max_items_are_the_last_page() {
        assert_eq!(page(3, 50), (vec![1, 2, 3], None));
        // Exactly a page: the query found no extra row, so nothing follows.
        assert_eq!(page(3, 3), (vec![1, 2, 3], None));
    }

    #[test]
    fn one_row_more_than_a_page_cuts_it_and_marks_its_last_row() {
        assert_eq!(page(4, 3), (vec![1, 2, 3], Some("3".into())));
        assert_eq!(page(2, 1), (vec![1], Some("1".into())));
    }

    #[test]
    fn more_rows_than_asked_for_are_cut_to_max_items() {
        // A listing filtered after its fetch (another account's shared layer versions) has
        // more than one extra row.
        assert_eq!(page(120, 50).0.len(), 50);
        assert_eq!(page(120, 50).1, Some("50".into()));
    }

    #[test]
    fn max_items_bounds_page_as_validate_gives_them() {
        // MaxItems' smallest (1) and largest answered page (50), as the handlers get them.
        let one = validate::max_items(Some("1"), 50, 50).unwrap();
        assert_eq!(page(51, one), (vec![1], Some("1".into())));
        let most = validate::max_items(Some("10000"), 10_000, 50).unwrap();
        let (rows, next) = page(51, most);
        assert_eq!((rows.len(), next), (50, Some("50".into())));
        let absent = validate::max_items(None, 50, 50).unwrap();
        assert_eq!(page(50, absent).1, None);
    }

    #[test]
    fn the_marker_is_called_only_when_a_page_follows() {
        let (_, next) = paginate(vec![1, 2], 2, |_: &u32| unreachable!("no next page"));
        assert_eq!(next, None);
    }

    #[test]
    fn markers_round_trip_and_others_are_refused() {
        for key in ["", "f", "my-function:12", "$LATEST", "ünïcode"] {
            let marker = encode_marker(key);
            assert!(marker
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            assert_eq!(decode_marker(&marker).unwrap(), key);
        }
        for bad in ["!!", "a", "_w"] {
            match decode_marker(bad) {
                Err(ApiError::InvalidParameter(m)) => {
                    assert_eq!(m, format!("Invalid Marker: {bad}"))
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }
}
