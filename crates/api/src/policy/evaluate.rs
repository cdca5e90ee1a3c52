//! What a function's resource policy allows another account: a pure function of the policies,
//! the caller, the action and the qualifier invoked, table-tested below.
//!
//! Ember's callers are accounts calling directly (there are no IAM users, roles, services or
//! organizations), so a statement allows a call when its action covers the call's, its
//! principal names the caller's account (or is `*`), it is on the qualifier called (the
//! unqualified function's policy for an unqualified or `$LATEST` call, an alias's for a call
//! through that alias, a version's for a call of that version), and each of its conditions
//! holds for a direct call: `SourceAccount` holds when it is the caller's account; `SourceArn`,
//! `PrincipalOrgID`, `EventSourceToken`, `FunctionUrlAuthType` and `InvokedViaFunctionUrl: true`
//! never do (a direct call comes from no resource, organization, Alexa skill or function URL).
//! A call through a function URL ([`Call::url_auth`]) meets `FunctionUrlAuthType` when it names
//! the URL's auth type, and `InvokedViaFunctionUrl: true` (not `false`); an anonymous caller (a
//! `NONE` URL's, `caller_account` empty) matches only the principal `*`.
//! A service principal (`s3.amazonaws.com`) never matches an account.

use ember_store::{Policy, PolicyStatement};

/// A call of another account's function, as the policy judges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Call<'a> {
    /// The calling account (from its verified signature); empty for an anonymous caller.
    pub caller_account: &'a str,
    /// The IAM action of the operation, e.g. `lambda:InvokeFunction`.
    pub action: &'a str,
    /// The qualifier called: `None` (or `$LATEST`) for the unqualified function, else a version
    /// number or an alias name, as the caller wrote it.
    pub qualifier: Option<&'a str>,
    /// For a call through a function URL, the URL's auth type (`NONE` or `AWS_IAM`); `None`
    /// for a direct call.
    pub url_auth: Option<&'a str>,
}

/// Whether a statement of `policies` allows `call`. There is no deny: every statement Lambda
/// writes is `Effect: Allow`.
pub(crate) fn allows(policies: &[Policy], call: &Call<'_>) -> bool {
    let qualifier = call.qualifier.filter(|q| *q != "$LATEST");
    policies
        .iter()
        .filter(|p| p.qualifier.as_deref() == qualifier)
        .flat_map(|p| &p.statements)
        .any(|s| statement_allows(s, call))
}

fn statement_allows(s: &PolicyStatement, call: &Call<'_>) -> bool {
    let action = s.action == "*"
        || s.action.eq_ignore_ascii_case("lambda:*")
        || s.action.eq_ignore_ascii_case(call.action);
    let anonymous = call.caller_account.is_empty();
    let principal = s.principal == "*"
        || (!anonymous
            && (s.principal == call.caller_account
                || s.principal == format!("arn:aws:iam::{}:root", call.caller_account)));
    let source_account = s
        .source_account
        .as_deref()
        .is_none_or(|a| !anonymous && a == call.caller_account);
    let url_auth = s
        .function_url_auth_type
        .as_deref()
        .is_none_or(|a| call.url_auth == Some(a));
    let via_url = s
        .invoked_via_function_url
        .is_none_or(|via| via == call.url_auth.is_some());
    let unmet_condition =
        s.source_arn.is_some() || s.principal_org_id.is_some() || s.event_source_token.is_some();
    action && principal && source_account && url_auth && via_url && !unmet_condition
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: &str = "222222222222";
    const INVOKE: &str = "lambda:InvokeFunction";

    fn statement(action: &str, principal: &str) -> PolicyStatement {
        PolicyStatement {
            statement_id: "s".into(),
            action: action.into(),
            principal: principal.into(),
            ..Default::default()
        }
    }

    fn policy(qualifier: Option<&str>, statements: Vec<PolicyStatement>) -> Policy {
        Policy {
            qualifier: qualifier.map(str::to_owned),
            revision_id: "r".into(),
            statements,
        }
    }

    fn call<'a>(action: &'a str, qualifier: Option<&'a str>) -> Call<'a> {
        Call {
            caller_account: B,
            action,
            qualifier,
            url_auth: None,
        }
    }

    /// Which principals and actions of an unqualified statement let account B invoke.
    #[test]
    fn principal_and_action_table() {
        let table: &[(&str, &str, &str, bool)] = &[
            // (statement's action, principal, call's action, allowed)
            (INVOKE, B, INVOKE, true),
            (INVOKE, "arn:aws:iam::222222222222:root", INVOKE, true),
            (INVOKE, "*", INVOKE, true),
            ("lambda:*", B, INVOKE, true),
            ("*", B, INVOKE, true),
            ("lambda:invokefunction", B, INVOKE, true),
            (INVOKE, "333333333333", INVOKE, false),
            (INVOKE, "arn:aws:iam::333333333333:root", INVOKE, false),
            (INVOKE, "s3.amazonaws.com", INVOKE, false),
            ("lambda:GetFunction", B, INVOKE, false),
            ("lambda:InvokeFunctionUrl", B, INVOKE, false),
            (INVOKE, B, "lambda:GetFunction", false),
            ("lambda:GetFunction", B, "lambda:GetFunction", true),
            ("lambda:*", B, "lambda:GetFunctionConfiguration", true),
            (
                "lambda:GetFunction",
                B,
                "lambda:GetFunctionConfiguration",
                false,
            ),
        ];
        for &(action, principal, called, allowed) in table {
            let policies = [policy(None, vec![statement(action, principal)])];
            assert_eq!(
                allows(&policies, &call(called, None)),
                allowed,
                "{action} to {principal}, calling {called}"
            );
        }
        assert!(!allows(&[], &call(INVOKE, None)), "no policy, no call");
    }

    /// A policy applies to calls of the qualifier it is on, and only to those.
    #[test]
    fn qualifier_table() {
        let table: &[(Option<&str>, Option<&str>, bool)] = &[
            // (policy's qualifier, qualifier called, allowed)
            (None, None, true),
            (None, Some("$LATEST"), true),
            (None, Some("1"), false),
            (None, Some("live"), false),
            (Some("live"), Some("live"), true),
            (Some("live"), None, false),
            (Some("live"), Some("$LATEST"), false),
            (Some("live"), Some("1"), false),
            (Some("1"), Some("1"), true),
            (Some("1"), Some("2"), false),
        ];
        for &(on, called, allowed) in table {
            let policies = [policy(on, vec![statement(INVOKE, B)])];
            assert_eq!(
                allows(&policies, &call(INVOKE, called)),
                allowed,
                "a policy on {on:?}, calling {called:?}"
            );
        }
    }

    /// Conditions, as they hold for a direct call by account B.
    #[test]
    fn condition_table() {
        let base = statement(INVOKE, "*");
        let table: Vec<(&str, PolicyStatement, bool)> = vec![
            ("none", base.clone(), true),
            (
                "SourceAccount = B",
                PolicyStatement {
                    source_account: Some(B.into()),
                    ..base.clone()
                },
                true,
            ),
            (
                "SourceAccount = C",
                PolicyStatement {
                    source_account: Some("333333333333".into()),
                    ..base.clone()
                },
                false,
            ),
            (
                "SourceArn",
                PolicyStatement {
                    source_arn: Some("arn:aws:s3:::bucket".into()),
                    ..base.clone()
                },
                false,
            ),
            (
                "PrincipalOrgID",
                PolicyStatement {
                    principal_org_id: Some("o-abcdefghij".into()),
                    ..base.clone()
                },
                false,
            ),
            (
                "EventSourceToken",
                PolicyStatement {
                    event_source_token: Some("token".into()),
                    ..base.clone()
                },
                false,
            ),
            (
                "FunctionUrlAuthType",
                PolicyStatement {
                    function_url_auth_type: Some("NONE".into()),
                    ..base.clone()
                },
                false,
            ),
            (
                "InvokedViaFunctionUrl = true",
                PolicyStatement {
                    invoked_via_function_url: Some(true),
                    ..base.clone()
                },
                false,
            ),
            (
                "InvokedViaFunctionUrl = false",
                PolicyStatement {
                    invoked_via_function_url: Some(false),
                    ..base.clone()
                },
                true,
            ),
        ];
        for (what, s, allowed) in table {
            let policies = [policy(None, vec![s])];
            assert_eq!(allows(&policies, &call(INVOKE, None)), allowed, "{what}");
        }
    }

    /// One matching statement among others is enough.
    #[test]
    fn any_matching_statement_allows() {
        let policies = [
            policy(Some("live"), vec![statement(INVOKE, B)]),
            policy(
                None,
                vec![
                    statement(INVOKE, "333333333333"),
                    statement("lambda:GetFunction", B),
                    statement(INVOKE, B),
                ],
            ),
        ];
        assert!(allows(&policies, &call(INVOKE, None)));
        assert!(allows(&policies, &call(INVOKE, Some("live"))));
        assert!(!allows(&policies, &call(INVOKE, Some("other"))));
    }

    /// Calls through a function URL: `InvokeFunctionUrl` by the URL's auth type; an anonymous
    /// caller only through `*`.
    #[test]
    fn function_url_table() {
        const URL: &str = "lambda:InvokeFunctionUrl";
        let with = |principal: &str, auth: Option<&str>, via: Option<bool>| PolicyStatement {
            function_url_auth_type: auth.map(str::to_owned),
            invoked_via_function_url: via,
            ..statement(URL, principal)
        };
        let table: Vec<(&str, PolicyStatement, &str, Option<&str>, bool)> = vec![
            // (what, statement, caller, URL's auth type, allowed)
            (
                "the console's NONE grant",
                with("*", Some("NONE"), None),
                "",
                Some("NONE"),
                true,
            ),
            (
                "no condition",
                with("*", None, None),
                "",
                Some("NONE"),
                true,
            ),
            (
                "NONE grant, IAM URL",
                with("*", Some("NONE"), None),
                B,
                Some("AWS_IAM"),
                false,
            ),
            (
                "IAM grant to B",
                with(B, Some("AWS_IAM"), None),
                B,
                Some("AWS_IAM"),
                true,
            ),
            (
                "IAM grant to B, anonymous",
                with(B, Some("AWS_IAM"), None),
                "",
                Some("NONE"),
                false,
            ),
            (
                "account grant, anonymous",
                with(B, None, None),
                "",
                Some("NONE"),
                false,
            ),
            (
                "NONE grant, direct call",
                with("*", Some("NONE"), None),
                B,
                None,
                false,
            ),
            (
                "via URL",
                with("*", None, Some(true)),
                "",
                Some("NONE"),
                true,
            ),
            (
                "not via URL",
                with("*", None, Some(false)),
                "",
                Some("NONE"),
                false,
            ),
            (
                "source account, anonymous",
                PolicyStatement {
                    source_account: Some(B.into()),
                    ..with("*", Some("NONE"), None)
                },
                "",
                Some("NONE"),
                false,
            ),
        ];
        for (what, s, caller, url_auth, allowed) in table {
            let policies = [policy(None, vec![s])];
            let call = Call {
                caller_account: caller,
                action: URL,
                qualifier: None,
                url_auth,
            };
            assert_eq!(allows(&policies, &call), allowed, "{what}");
        }
        // InvokeFunction does not cover a URL's call.
        let policies = [policy(None, vec![statement(INVOKE, "*")])];
        let call = Call {
            caller_account: "",
            action: URL,
            qualifier: None,
            url_auth: Some("NONE"),
        };
        assert!(!allows(&policies, &call));
    }
}
