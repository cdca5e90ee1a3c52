//! A function's SnapStart setting (Lambda's `SnapStart.ApplyOn`), as the store keeps it: in the
//! `snap_start` column of `functions` and `function_versions`, in Lambda's spelling.

use std::fmt;

use crate::{Function, LATEST};

/// Which of a function's versions start from a snapshot taken after the function's own init
/// (Lambda's `SnapStartApplyOn`). A published version keeps the value it was published with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum SnapStartApplyOn {
    /// No version does: every start runs the function's init (Lambda's default).
    #[default]
    None,
    /// Published versions do; `$LATEST` never does.
    PublishedVersions,
}

impl SnapStartApplyOn {
    /// Every value, in the order Lambda's model lists them.
    pub const ALL: [Self; 2] = [Self::PublishedVersions, Self::None];

    /// The value as Lambda spells it (`PublishedVersions`, `None`): in the API and the column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "None",
            Self::PublishedVersions => "PublishedVersions",
        }
    }

    /// The value Lambda spells `text`, exactly (case matters, as in Lambda); `None` for any
    /// other text.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == text)
    }
}

impl fmt::Display for SnapStartApplyOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Function {
    /// Whether SnapStart applies to this version: a published version (never `$LATEST`) whose
    /// settings say [`SnapStartApplyOn::PublishedVersions`].
    pub fn snap_start_applies(&self) -> bool {
        self.version != LATEST && self.spec.snap_start == SnapStartApplyOn::PublishedVersions
    }
}

#[cfg(test)]
mod tests;
