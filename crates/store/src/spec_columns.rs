//! The settings columns that a function's row (`functions`) and its published versions' rows
//! (`function_versions`) share: named, bound and read in one place, so that a setting added to
//! [`FunctionSpec`] is stored and read the same way in both tables.

use sqlx::any::{AnyArguments, AnyRow};
use sqlx::query::Query;
use sqlx::{Any, Row};

use crate::{
    from_json, parse_time, to_json, Function, FunctionEgress, FunctionSpec, Result,
    SnapStartApplyOn, StoreError,
};

/// The columns of a [`FunctionSpec`], in the order [`bind_spec`] binds them.
pub(crate) const SPEC_COLUMNS: [&str; 12] = [
    "runtime",
    "role",
    "handler",
    "description",
    "timeout_s",
    "memory_mb",
    "ephemeral_mb",
    "environment",
    "architectures",
    "package_type",
    "layers",
    "snap_start",
];

/// A statement under construction, bound in the order of its placeholders.
pub(crate) type DbQuery<'q> = Query<'q, Any, AnyArguments<'q>>;

/// Binds `spec`'s columns, in [`SPEC_COLUMNS`]' order, after whatever `query` has bound.
pub(crate) fn bind_spec<'q>(query: DbQuery<'q>, spec: &'q FunctionSpec) -> DbQuery<'q> {
    query
        .bind(&spec.runtime)
        .bind(&spec.role)
        .bind(&spec.handler)
        .bind(&spec.description)
        .bind(i64::from(spec.timeout_s))
        .bind(i64::from(spec.memory_mb))
        .bind(i64::from(spec.ephemeral_mb))
        .bind(to_json(&spec.environment))
        .bind(to_json(&spec.architectures))
        .bind(&spec.package_type)
        .bind(to_json(&spec.layers))
        .bind(spec.snap_start.as_str())
}

/// An `INSERT INTO table (leading…, SPEC_COLUMNS…, trailing…) VALUES ($1, …)`: the leading
/// columns are bound first, then [`bind_spec`], then the trailing ones.
pub(crate) fn insert_statement(table: &str, leading: &[&str], trailing: &[&str]) -> String {
    let columns: Vec<&str> = leading
        .iter()
        .chain(SPEC_COLUMNS.iter())
        .chain(trailing)
        .copied()
        .collect();
    let values: Vec<String> = (1..=columns.len()).map(|i| format!("${i}")).collect();
    format!(
        "INSERT INTO {table} ({}) VALUES ({})",
        columns.join(", "),
        values.join(", ")
    )
}

/// `col = $first, col = $first+1, …` for [`SPEC_COLUMNS`] then `trailing`, in that order: the
/// `SET` list of an `UPDATE` whose earlier placeholders (`$1` … `$first-1`) its `WHERE` uses.
pub(crate) fn assignments(first: usize, trailing: &[&str]) -> String {
    SPEC_COLUMNS
        .iter()
        .chain(trailing)
        .enumerate()
        .map(|(i, column)| format!("{column} = ${}", first + i))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads a function, or one of its versions, from a row holding [`SPEC_COLUMNS`],
/// `account_id`, `code_sha256`, `code_size`, `revision_id`, `last_modified` and the
/// function's `reserved_concurrency` and `egress`; the function's name is in `name_column`.
pub(crate) fn function_from_row(
    row: &AnyRow,
    name_column: &str,
    version: String,
) -> Result<Function> {
    let int = |col: &str| -> Result<u32> {
        let v: i64 = row.try_get(col)?;
        u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("{col} = {v}")))
    };
    let json = |col: &str| -> Result<String> { Ok(row.try_get(col)?) };
    let last_modified: String = row.try_get("last_modified")?;
    let reserved: Option<i64> = row.try_get("reserved_concurrency")?;
    let egress: Option<String> = row.try_get("egress")?;
    let code_size: i64 = row.try_get("code_size")?;
    Ok(Function {
        account_id: row.try_get("account_id")?,
        name: row.try_get(name_column)?,
        version,
        spec: FunctionSpec {
            runtime: row.try_get("runtime")?,
            role: row.try_get("role")?,
            handler: row.try_get("handler")?,
            description: row.try_get("description")?,
            timeout_s: int("timeout_s")?,
            memory_mb: int("memory_mb")?,
            ephemeral_mb: int("ephemeral_mb")?,
            environment: from_json(&json("environment")?)?,
            architectures: from_json(&json("architectures")?)?,
            package_type: row.try_get("package_type")?,
            layers: from_json(&json("layers")?)?,
            snap_start: {
                let text: String = row.try_get("snap_start")?;
                SnapStartApplyOn::parse(&text)
                    .ok_or_else(|| StoreError::Corrupt(format!("snap_start = {text:?}")))?
            },
        },
        code_sha256: row.try_get("code_sha256")?,
        code_size: u64::try_from(code_size)
            .map_err(|_| StoreError::Corrupt(format!("code_size = {code_size}")))?,
        revision_id: row.try_get("revision_id")?,
        last_modified: parse_time(&last_modified)?,
        reserved_concurrency: reserved
            .map(|v| u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("reserved = {v}"))))
            .transpose()?,
        egress: egress
            .map(|text| {
                FunctionEgress::parse(&text)
                    .ok_or_else(|| StoreError::Corrupt(format!("egress = {text:?}")))
            })
            .transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_insert_numbers_every_column_once_in_order() {
        let sql = insert_statement("t", &["a", "b"], &["z"]);
        assert_eq!(
            sql,
            "INSERT INTO t (a, b, runtime, role, handler, description, timeout_s, memory_mb, \
             ephemeral_mb, environment, architectures, package_type, layers, snap_start, z) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
        );
    }

    #[test]
    fn assignments_continue_after_the_where_clauses_placeholders() {
        let set = assignments(3, &["code_sha256"]);
        assert!(set.starts_with("runtime = $3, role = $4, "), "{set}");
        assert!(
            set.ends_with("layers = $13, snap_start = $14, code_sha256 = $15"),
            "{set}"
        );
    }
}
