//! SELECT-only SQL for tenants: parsed with `sqlparser` (ClickHouse dialect), checked, rewritten so
//! that every table it reads is a subquery filtered on the caller's `tenant_id`, and rendered back
//! from the syntax tree. ClickHouse never sees the caller's text, only what the tree renders to, so
//! comment tricks and anything the parser did not understand cannot reach it.
//!
//! What is refused: more than one statement, anything but a query, SETTINGS / FORMAT / INTO
//! clauses, table functions (every one: `url`, `remote`, `s3`, `file`, `numbers`, ...), tables
//! outside the allow-list or qualified with a database (`system.*` included), functions that read
//! outside the query's tables (`dictGet`, `joinGet`, `file`, ...), and CTEs named like a table.
//! The statement runs with `readonly=1` in an empty database, so a name that is neither a CTE in
//! scope nor a rewritten table finds nothing.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    Expr, Ident, ObjectNamePart, Query, Select, Statement, TableAlias, TableFactor, Value,
    ValueWithSpan, VisitMut, VisitorMut,
};
use sqlparser::dialect::ClickHouseDialect;
use sqlparser::parser::Parser;

use crate::QueryError;

/// Functions that read data or state outside the tables of the query (dictionaries, Join
/// tables, files, server internals) or that stall the shared engine. Compared lower-cased; an
/// entry ending in `*` is a prefix.
const DENIED_FUNCTIONS: &[&str] = &[
    "dict*",
    "joinget*",
    "file",
    "getmacro",
    "filesystem*",
    "hascolumnintable",
    "getsetting*",
    "getserverport",
    "getclienthttpheader",
    "sleep*",
    "catboostevaluate",
    "evalmlmethod",
    "generateserialid",
    "transactionid",
    "transactionlatestsnapshot",
    "transactionoldestsnapshot",
    "currentprofiles",
    "currentroles",
    "enabledprofiles",
    "enabledroles",
    "defaultprofiles",
    "defaultroles",
    "getoskernelversion",
    "buildid",
    "uptime",
    "zookeepersessionuptime",
    "initialqueryid",
    "queryid",
    "initialquerystarttime",
    "shardnum",
    "shardcount",
    "hostname",
    "fqdn",
    "tcpport",
    "displayname",
];

/// What the rules need to know: the tables a tenant may read and where they live.
#[derive(Debug, Clone)]
pub struct SqlPolicy {
    /// Tables (and views) that have a `tenant_id` column and may be read, unqualified.
    pub tables: BTreeSet<String>,
    /// The database they live in; rewritten references are qualified with it.
    pub database: String,
}

impl SqlPolicy {
    pub fn new(tables: impl IntoIterator<Item = String>, database: impl Into<String>) -> Self {
        Self {
            tables: tables.into_iter().collect(),
            database: database.into(),
        }
    }
}

/// Parses, checks and rewrites `sql` for `tenant`. The result is one SELECT statement whose
/// every table reference is `(SELECT * FROM db.table WHERE tenant_id = '<tenant>') AS <name>`.
pub fn scope(sql: &str, tenant: &str, policy: &SqlPolicy) -> Result<String, QueryError> {
    let mut statements = Parser::parse_sql(&ClickHouseDialect {}, sql)
        .map_err(|e| QueryError::BadSql(e.to_string()))?;
    let mut statement = match statements.len() {
        0 => return Err(QueryError::BadSql("empty statement".into())),
        1 => statements.remove(0),
        n => {
            return Err(QueryError::refused(
                "multiple_statements",
                format!("exactly one statement is allowed, got {n}"),
            ));
        }
    };
    if !matches!(statement, Statement::Query(_)) {
        return Err(QueryError::refused(
            "not_a_query",
            "only SELECT queries (SELECT, WITH, UNION) are allowed",
        ));
    }

    let mut ctes = CteNames::default();
    let _ = statement.visit(&mut ctes);
    if let Some(name) = ctes.names.iter().find(|n| policy.tables.contains(*n)) {
        return Err(QueryError::refused(
            "cte_shadows_table",
            format!("a CTE may not be named like the table {name}"),
        ));
    }
    let mut scoper = Scoper {
        policy,
        tenant,
        ctes: &ctes.names,
    };
    if let ControlFlow::Break(refused) = statement.visit(&mut scoper) {
        return Err(refused);
    }
    Ok(statement.to_string())
}

#[derive(Default)]
struct CteNames {
    names: BTreeSet<String>,
}

impl VisitorMut for CteNames {
    type Break = ();

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        if let Some(with) = &query.with {
            self.names
                .extend(with.cte_tables.iter().map(|c| c.alias.name.value.clone()));
        }
        ControlFlow::Continue(())
    }
}

struct Scoper<'a> {
    policy: &'a SqlPolicy,
    tenant: &'a str,
    ctes: &'a BTreeSet<String>,
}

fn refuse(reason: &'static str, detail: impl Into<String>) -> ControlFlow<QueryError> {
    ControlFlow::Break(QueryError::refused(reason, detail))
}

impl VisitorMut for Scoper<'_> {
    type Break = QueryError;

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<QueryError> {
        if query.settings.is_some() {
            return refuse("settings", "SETTINGS clauses are not allowed");
        }
        if query.format_clause.is_some() {
            return refuse("format", "FORMAT clauses are not allowed");
        }
        if !query.locks.is_empty() || query.for_clause.is_some() || !query.pipe_operators.is_empty()
        {
            return refuse("clause", "FOR / locking / pipe clauses are not allowed");
        }
        if query.with.as_ref().is_some_and(|w| w.recursive) {
            return refuse("clause", "WITH RECURSIVE is not allowed");
        }
        ControlFlow::Continue(())
    }

    // The tree renders literals with doubled quotes but without re-escaping backslashes, while
    // ClickHouse reads a backslash as an escape: `'\\'` would come out as `'\'` and swallow the
    // text after it. Literals and quoted names with a backslash (or of another quoting style)
    // are therefore refused, which leaves only renderings ClickHouse reads back identically.
    fn pre_visit_value(&mut self, value: &mut ValueWithSpan) -> ControlFlow<QueryError> {
        match &value.value {
            Value::SingleQuotedString(s) if s.contains('\\') => {
                refuse("literal", "string literals may not contain a backslash")
            }
            Value::SingleQuotedString(_)
            | Value::Number(..)
            | Value::Boolean(_)
            | Value::Null
            | Value::Placeholder(_) => ControlFlow::Continue(()),
            other => refuse("literal", format!("literal {other} is not supported")),
        }
    }

    fn pre_visit_ident(&mut self, ident: &mut Ident) -> ControlFlow<QueryError> {
        if ident.value.contains(['\\', '`', '"']) {
            return refuse(
                "literal",
                "names may not contain a backslash or a quote character",
            );
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &mut Select) -> ControlFlow<QueryError> {
        if select.into.is_some() {
            return refuse("into", "SELECT INTO is not allowed");
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<QueryError> {
        if let Expr::Function(function) = expr {
            let name = function
                .name
                .0
                .last()
                .map(|part| match part {
                    ObjectNamePart::Identifier(ident) => ident.value.to_lowercase(),
                    ObjectNamePart::Function(f) => f.name.value.to_lowercase(),
                })
                .unwrap_or_default();
            if function.name.0.len() > 1 {
                return refuse("function", format!("qualified function {}", function.name));
            }
            if denied_function(&name) {
                return refuse("function", format!("function {name} is not allowed"));
            }
        }
        ControlFlow::Continue(())
    }

    fn post_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<QueryError> {
        match factor {
            TableFactor::Derived { .. } | TableFactor::NestedJoin { .. } => {
                ControlFlow::Continue(())
            }
            TableFactor::Table {
                name,
                alias,
                args,
                with_hints,
                version,
                with_ordinality,
                partitions,
                json_path,
                sample,
                index_hints,
            } => {
                if args.is_some() {
                    return refuse(
                        "table_function",
                        format!("table function {name} is not allowed"),
                    );
                }
                let table = match name.0.as_slice() {
                    [ObjectNamePart::Identifier(ident)] => ident.value.clone(),
                    [ObjectNamePart::Identifier(db), ..]
                        if db.value.eq_ignore_ascii_case("system") =>
                    {
                        return refuse("system", format!("{name}: system tables are not allowed"));
                    }
                    _ => {
                        return refuse(
                            "other_database",
                            format!("{name}: tables are named without a database"),
                        );
                    }
                };
                if self.ctes.contains(&table) {
                    return ControlFlow::Continue(());
                }
                if !self.policy.tables.contains(&table) {
                    return refuse(
                        "unknown_table",
                        format!(
                            "table {table} is not readable; readable tables: {}",
                            self.policy
                                .tables
                                .iter()
                                .cloned()
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    );
                }
                if !with_hints.is_empty()
                    || version.is_some()
                    || *with_ordinality
                    || !partitions.is_empty()
                    || json_path.is_some()
                    || sample.is_some()
                    || !index_hints.is_empty()
                {
                    return refuse(
                        "clause",
                        format!("table modifiers on {table} are not supported"),
                    );
                }
                // `FROM t FINAL` parses as an alias named FINAL: it belongs inside the subquery.
                let is_final = alias.as_ref().is_some_and(|a| {
                    !a.explicit
                        && a.name.quote_style.is_none()
                        && a.name.value.eq_ignore_ascii_case("final")
                });
                let alias = if is_final { None } else { alias.take() };
                let subquery = match self.scoped_table(&table, is_final) {
                    Ok(q) => q,
                    Err(e) => return ControlFlow::Break(e),
                };
                *factor = TableFactor::Derived {
                    lateral: false,
                    subquery,
                    alias: Some(alias.unwrap_or_else(|| TableAlias {
                        explicit: true,
                        name: Ident::with_quote('`', table),
                        columns: Vec::new(),
                        at: None,
                    })),
                    sample: None,
                };
                ControlFlow::Continue(())
            }
            other => refuse(
                "table_function",
                format!("{other}: only tables and subqueries may be read"),
            ),
        }
    }
}

impl Scoper<'_> {
    fn scoped_table(&self, table: &str, is_final: bool) -> Result<Box<Query>, QueryError> {
        // Same reason as for literals: the rendering would not escape it.
        if self.tenant.contains('\\') {
            return Err(QueryError::Internal(
                "tenant ids with a backslash cannot be scoped".into(),
            ));
        }
        let sql = format!(
            "SELECT * FROM {}.{}{} WHERE tenant_id = {}",
            quote_ident(&self.policy.database),
            quote_ident(table),
            if is_final { " FINAL" } else { "" },
            quote_string(self.tenant),
        );
        let mut parsed = Parser::parse_sql(&ClickHouseDialect {}, &sql)
            .map_err(|e| QueryError::Internal(format!("scoped subquery {sql:?}: {e}")))?;
        match parsed.pop() {
            Some(Statement::Query(query)) => Ok(query),
            _ => Err(QueryError::Internal(format!(
                "scoped subquery {sql:?} is not a query"
            ))),
        }
    }
}

fn denied_function(name: &str) -> bool {
    DENIED_FUNCTIONS
        .iter()
        .any(|denied| match denied.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == *denied,
        })
}

/// A backquoted ClickHouse identifier.
pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('\\', "\\\\").replace('`', "\\`"))
}

/// A single-quoted string literal in the form the tree renders back unchanged (doubled quotes).
fn quote_string(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> SqlPolicy {
        SqlPolicy::new(["events".to_owned(), "alerts".to_owned()], "data")
    }

    fn ok(sql: &str) -> String {
        scope(sql, "t1", &policy()).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    fn refused(sql: &str) -> QueryError {
        match scope(sql, "t1", &policy()) {
            Ok(out) => panic!("{sql} was accepted as {out}"),
            Err(e) => e,
        }
    }

    #[test]
    fn every_table_reference_becomes_a_scoped_subquery() {
        let out = ok("SELECT count() FROM events");
        assert_eq!(
            out,
            "SELECT count() FROM (SELECT * FROM `data`.`events` WHERE tenant_id = 't1') AS `events`"
        );
        let out = ok("SELECT e.path FROM events AS e JOIN alerts a ON e.tenant_id = a.tenant_id");
        assert_eq!(out.matches("WHERE tenant_id = 't1'").count(), 2, "{out}");
        assert!(out.contains(") AS e "), "{out}");
        let out = ok(
            "WITH x AS (SELECT * FROM events) SELECT * FROM x WHERE path IN (SELECT path FROM events)",
        );
        assert_eq!(out.matches("WHERE tenant_id = 't1'").count(), 2, "{out}");
    }

    #[test]
    fn final_moves_into_the_subquery() {
        let out = ok("SELECT * FROM alerts FINAL");
        assert!(
            out.contains("`data`.`alerts` FINAL WHERE tenant_id = 't1'"),
            "{out}"
        );
    }

    #[test]
    fn tenant_ids_are_quoted() {
        let out = scope("SELECT 1 FROM events", "a'b", &policy()).expect("scoped");
        assert!(out.contains("tenant_id = 'a''b'"), "{out}");
        assert!(scope("SELECT 1 FROM events", "a\\", &policy()).is_err());
    }

    #[test]
    fn refusals_name_their_reason() {
        for (sql, reason) in [
            ("SELECT 1; SELECT 2", "multiple_statements"),
            ("INSERT INTO events VALUES (1)", "not_a_query"),
            ("SELECT 1 FROM events SETTINGS readonly = 0", "settings"),
            ("SELECT * FROM url('http://x', CSV)", "table_function"),
            ("SELECT * FROM system.tables", "system"),
            ("SELECT * FROM other.events", "other_database"),
            ("SELECT * FROM sink_offsets", "unknown_table"),
            ("SELECT dictGet('d', 'a', 1) FROM events", "function"),
            (
                "WITH events AS (SELECT 1) SELECT * FROM events",
                "cte_shadows_table",
            ),
        ] {
            match refused(sql) {
                QueryError::Refused { reason: r, .. } => assert_eq!(r, reason, "{sql}"),
                other => panic!("{sql}: {other:?}"),
            }
        }
    }
}
