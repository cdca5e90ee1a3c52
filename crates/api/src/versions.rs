//! Published versions: PublishVersion, ListVersionsByFunction, and the resolution of a
//! qualifier (`$LATEST`, a version number, an alias) to the version it names.

use ember_store::{Function, LATEST};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::validate::FunctionRef;
use crate::AppState;

impl AppState {
    /// Loads the version `target` names: `$LATEST` (or no qualifier), a published version, or
    /// the version an alias points at (its primary version: the weighted choice is Invoke's).
    /// Anything else, or an unknown function, is Lambda's 404 naming the qualified ARN.
    pub(crate) async fn qualified(
        &self,
        caller: &Caller,
        target: &FunctionRef,
    ) -> Result<Function, ApiError> {
        let account = &caller.account_id;
        let arn = self.arn(account, &target.name);
        let Some(qualifier) = target.qualifier.as_deref() else {
            return self
                .store
                .function(account, &target.name)
                .await?
                .ok_or_else(|| ApiError::function_not_found(&arn));
        };
        validate_qualifier(qualifier)?;
        let not_found = || ApiError::function_not_found(&format!("{arn}:{qualifier}"));
        if qualifier == LATEST || is_version_number(qualifier) {
            return self
                .store
                .function_version(account, &target.name, qualifier)
                .await?
                .ok_or_else(not_found);
        }
        let alias = self
            .store
            .alias(account, &target.name, qualifier)
            .await?
            .ok_or_else(not_found)?;
        self.store
            .function_version(account, &target.name, &alias.function_version)
            .await?
            .ok_or_else(not_found)
    }
}

/// Whether `text` is a version number as Lambda writes one (`[0-9]+`).
pub(crate) fn is_version_number(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

/// Checks a `Qualifier` against botocore's constraints (1 to 128 of `[a-zA-Z0-9$_-]`).
pub(crate) fn validate_qualifier(q: &str) -> Result<(), ApiError> {
    if q.is_empty()
        || q.len() > 128
        || !q
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'$' || b == b'_' || b == b'-')
    {
        return Err(ApiError::InvalidParameter(format!(
            "1 validation error detected: Value '{q}' at 'qualifier' failed to satisfy \
             constraint: Member must satisfy regular expression pattern: (|[a-zA-Z0-9$_-]+)"
        )));
    }
    Ok(())
}
