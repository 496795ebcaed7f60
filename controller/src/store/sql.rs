//! The two backends behind one small SQL interface ([`Sql`]): SQLite (rusqlite) and
//! PostgreSQL (tokio-postgres). The store's statements are written once, with `?N`
//! placeholders (PostgreSQL gets them as `$N`), values are [`Value`]s, and rows come back
//! as [`Row`]s; what differs between the two (the schema, row locks) is chosen by
//! [`Sql::backend`].
//!
//! PostgreSQL calls block the calling thread, as SQLite's do: the connection's I/O runs
//! on a thread of its own (its own single-threaded tokio runtime), and a call waits for
//! its answer with a plain executor. So a call may come from a blocking thread, from
//! start-up, or from an async task without a runtime being started inside a runtime.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;

use tokio_postgres::types::{IsNull, ToSql, Type};

use crate::Error;

/// Which database a connection talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A value bound to a statement or read from a row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::Int(v as i64)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_string())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::Text(v.clone())
    }
}
impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value::Blob(v)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// `vals![a, b, c]`: an array of the arguments as [`Value`]s (`&vals![..]` is a
/// statement's arguments).
#[macro_export]
macro_rules! vals {
    ($($v:expr),* $(,)?) => { [$($crate::store::Value::from($v)),*] };
}

/// One row of a query's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row(pub Vec<Value>);

fn col_err(i: usize, want: &str, got: &Value) -> Error {
    Error::Internal(format!(
        "database: column {i}: expected {want}, found {got:?}"
    ))
}

impl Row {
    pub fn get(&self, i: usize) -> &Value {
        self.0.get(i).unwrap_or(&Value::Null)
    }
    pub fn int(&self, i: usize) -> Result<i64, Error> {
        match self.get(i) {
            Value::Int(v) => Ok(*v),
            v => Err(col_err(i, "an integer", v)),
        }
    }
    pub fn opt_int(&self, i: usize) -> Result<Option<i64>, Error> {
        match self.get(i) {
            Value::Null => Ok(None),
            Value::Int(v) => Ok(Some(*v)),
            v => Err(col_err(i, "an integer or NULL", v)),
        }
    }
    /// Text (PostgreSQL keeps some text as bytes: see the store's schema).
    pub fn text(&self, i: usize) -> Result<String, Error> {
        match self.get(i) {
            Value::Text(v) => Ok(v.clone()),
            Value::Blob(b) => String::from_utf8(b.clone())
                .map_err(|_| col_err(i, "UTF-8 text", &Value::Blob(b.clone()))),
            v => Err(col_err(i, "text", v)),
        }
    }
    pub fn opt_text(&self, i: usize) -> Result<Option<String>, Error> {
        match self.get(i) {
            Value::Null => Ok(None),
            Value::Text(v) => Ok(Some(v.clone())),
            v => Err(col_err(i, "text or NULL", v)),
        }
    }
    pub fn blob(&self, i: usize) -> Result<Vec<u8>, Error> {
        match self.get(i) {
            Value::Blob(v) => Ok(v.clone()),
            v => Err(col_err(i, "bytes", v)),
        }
    }
}

/// A connection or a transaction of either backend.
pub trait Sql {
    fn backend(&self) -> Backend;
    /// Runs one statement; returns the rows it changed.
    fn execute(&self, sql: &str, args: &[Value]) -> Result<u64, Error>;
    /// Runs one query; returns its rows.
    fn query(&self, sql: &str, args: &[Value]) -> Result<Vec<Row>, Error>;
    /// Runs several statements without arguments (schema migrations).
    fn batch(&self, sql: &str) -> Result<(), Error>;
    /// The first row of a query, if any.
    fn query_opt(&self, sql: &str, args: &[Value]) -> Result<Option<Row>, Error> {
        Ok(self.query(sql, args)?.into_iter().next())
    }
    /// `FOR UPDATE` on PostgreSQL (a row lock held until the transaction ends), nothing
    /// on SQLite (whose writers hold the whole database).
    fn for_update(&self) -> &'static str {
        match self.backend() {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE",
        }
    }
}

pub(crate) fn sqlite_err(e: rusqlite::Error) -> Error {
    Error::Internal(format!("database: {e}"))
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(v) => ValueRef::Integer(*v),
            Value::Text(v) => ValueRef::Text(v.as_bytes()),
            Value::Blob(v) => ValueRef::Blob(v),
        }))
    }
}

fn sqlite_row(r: &rusqlite::Row<'_>, n: usize) -> rusqlite::Result<Row> {
    use rusqlite::types::ValueRef;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(match r.get_ref(i)? {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(v) => Value::Int(v),
            ValueRef::Real(v) => Value::Int(v as i64),
            ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        });
    }
    Ok(Row(out))
}

impl Sql for rusqlite::Connection {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }
    fn execute(&self, sql: &str, args: &[Value]) -> Result<u64, Error> {
        let mut st = self.prepare_cached(sql).map_err(sqlite_err)?;
        st.execute(rusqlite::params_from_iter(args))
            .map(|n| n as u64)
            .map_err(sqlite_err)
    }
    fn query(&self, sql: &str, args: &[Value]) -> Result<Vec<Row>, Error> {
        let mut st = self.prepare_cached(sql).map_err(sqlite_err)?;
        let n = st.column_count();
        let rows = st
            .query_map(rusqlite::params_from_iter(args), |r| sqlite_row(r, n))
            .map_err(sqlite_err)?;
        rows.collect::<Result<_, _>>().map_err(sqlite_err)
    }
    fn batch(&self, sql: &str) -> Result<(), Error> {
        self.execute_batch(sql).map_err(sqlite_err)
    }
}

// ---------------------------------------------------------------------------------
// PostgreSQL

/// A PostgreSQL URL (`postgres://` or `postgresql://`), checked when parsed; shown
/// without its password.
#[derive(Clone)]
pub struct PgUrl {
    url: String,
    config: tokio_postgres::Config,
}

impl PgUrl {
    /// Parses a URL; the error names it (without its password).
    pub fn parse(url: &str) -> Result<PgUrl, Error> {
        let config: tokio_postgres::Config = url.parse().map_err(|e| {
            Error::InvalidArgument(format!(
                "{} is not a valid PostgreSQL URL: {e} (expected \
                 postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE)",
                redact(url)
            ))
        })?;
        if config.get_hosts().is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{}: the URL names no host (expected postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE)",
                redact(url)
            )));
        }
        Ok(PgUrl {
            url: url.to_string(),
            config,
        })
    }

    /// The URL as given (with its password, if it has one).
    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// The database name (`None`: the server's default, the user's name).
    pub fn dbname(&self) -> Option<&str> {
        self.config.get_dbname()
    }
}

impl fmt::Display for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.url))
    }
}

impl fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgUrl({self})")
    }
}

/// `url` without the password: the `:PASSWORD` of the user part and any `password=`
/// parameter become `***`.
pub fn redact(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = match base.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
                None => base.to_string(),
            },
            None => base.to_string(),
        },
        None => base.to_string(),
    };
    if let Some(q) = query {
        let q: Vec<String> = q
            .split('&')
            .map(|kv| {
                if kv.to_ascii_lowercase().starts_with("password=") {
                    "password=***".to_string()
                } else {
                    kv.to_string()
                }
            })
            .collect();
        out.push('?');
        out.push_str(&q.join("&"));
    }
    out
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut tokio_postgres::types::private::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(v) => match *ty {
                Type::INT8 => v.to_sql(ty, out),
                Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
                Type::BOOL => (*v != 0).to_sql(ty, out),
                _ => Err(format!("an integer for a column of type {ty}").into()),
            },
            // Text kept as bytes (see the store's schema) is its UTF-8.
            Value::Text(v) if *ty == Type::BYTEA => v.as_bytes().to_sql(ty, out),
            Value::Text(v) => v.as_str().to_sql(ty, out),
            Value::Blob(v) => v.as_slice().to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    fn to_sql_checked(
        &self,
        ty: &Type,
        out: &mut tokio_postgres::types::private::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        self.to_sql(ty, out)
    }
}

fn pg_row(r: &tokio_postgres::Row) -> Result<Row, Error> {
    let mut out = Vec::with_capacity(r.len());
    for (i, c) in r.columns().iter().enumerate() {
        let bad = |e: tokio_postgres::Error| Error::Internal(format!("database: {e}"));
        let v = match *c.type_() {
            Type::INT8 => r.try_get::<_, Option<i64>>(i).map_err(bad)?.into(),
            Type::INT4 => r
                .try_get::<_, Option<i32>>(i)
                .map_err(bad)?
                .map(i64::from)
                .into(),
            Type::INT2 => r
                .try_get::<_, Option<i16>>(i)
                .map_err(bad)?
                .map(i64::from)
                .into(),
            Type::BOOL => r
                .try_get::<_, Option<bool>>(i)
                .map_err(bad)?
                .map(i64::from)
                .into(),
            Type::BYTEA => r.try_get::<_, Option<Vec<u8>>>(i).map_err(bad)?.into(),
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
                r.try_get::<_, Option<String>>(i).map_err(bad)?.into()
            }
            ref t => {
                return Err(Error::Internal(format!(
                    "database: column {} has type {t}, which the store does not read",
                    c.name()
                )));
            }
        };
        out.push(v);
    }
    Ok(Row(out))
}

/// `?N` placeholders as PostgreSQL's `$N`.
fn pg_sql(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

/// A PostgreSQL connection (see the module docs), with its prepared statements. A
/// connection the server closed (a restart, a failover, an administrator) is opened again
/// by the next call: the call that found it broken fails, the ones after it work again
/// once the server answers.
pub struct PgConn {
    url: Box<PgUrl>,
    client: RefCell<tokio_postgres::Client>,
    statements: RefCell<HashMap<String, tokio_postgres::Statement>>,
    /// The URL, without its password (for messages).
    pub(crate) label: String,
}

impl fmt::Debug for PgConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgConn({})", self.label)
    }
}

/// Runs `fut` to completion on this thread (the connection's I/O runs on its own).
fn wait<F: std::future::Future>(fut: F) -> F::Output {
    futures_executor::block_on(fut)
}

impl PgConn {
    /// Connects (within 10 seconds); the error names the URL without its password.
    pub fn connect(url: &PgUrl) -> Result<PgConn, Error> {
        Ok(PgConn {
            url: Box::new(url.clone()),
            client: RefCell::new(PgConn::client(url)?),
            statements: RefCell::new(HashMap::new()),
            label: url.to_string(),
        })
    }

    /// The connection settings of `url`, with a 10-second connect timeout and the
    /// application name `app` unless the URL sets them.
    fn config(url: &PgUrl, app: &str) -> tokio_postgres::Config {
        let mut config = url.config.clone();
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(std::time::Duration::from_secs(10));
        }
        if config.get_application_name().is_none() {
            config.application_name(app);
        }
        config
    }

    /// A new connection whose I/O runs on a thread of its own (ending with it).
    fn client(url: &PgUrl) -> Result<tokio_postgres::Client, Error> {
        let label = url.to_string();
        let config = PgConn::config(url, "gateway-controller");
        let (tx, rx) = std::sync::mpsc::channel();
        let thread_label = label.clone();
        std::thread::Builder::new()
            .name("postgres-io".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(format!("starting its I/O runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(async move {
                    match config.connect(tokio_postgres::NoTls).await {
                        Ok((client, connection)) => {
                            let _ = tx.send(Ok(client));
                            if let Err(e) = connection.await {
                                tracing::error!(
                                    database = %thread_label,
                                    error = %e,
                                    "the PostgreSQL connection failed"
                                );
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(pg_error_text(&e)));
                        }
                    }
                });
            })
            .map_err(|e| Error::Internal(format!("starting the PostgreSQL thread: {e}")))?;
        rx.recv()
            .map_err(|_| {
                Error::Internal(format!("PostgreSQL {label}: the connection thread ended"))
            })?
            .map_err(|e| Error::Unavailable(format!("PostgreSQL {label}: cannot connect: {e}")))
    }

    /// Opens the connection again when the server closed it (see [`PgConn`]).
    fn reopen_if_closed(&self) -> Result<(), Error> {
        if !self.client.borrow().is_closed() {
            return Ok(());
        }
        tracing::warn!(database = %self.label, "the PostgreSQL connection was closed: reconnecting");
        let client = PgConn::client(&self.url)?;
        *self.client.borrow_mut() = client;
        // Prepared statements belong to the old connection.
        self.statements.borrow_mut().clear();
        Ok(())
    }

    fn err(&self, e: tokio_postgres::Error) -> Error {
        Error::Internal(format!("database ({}): {}", self.label, pg_error_text(&e)))
    }

    fn statement(
        &self,
        prepare: impl FnOnce(&str) -> Result<tokio_postgres::Statement, tokio_postgres::Error>,
        sql: &str,
    ) -> Result<tokio_postgres::Statement, Error> {
        if let Some(st) = self.statements.borrow().get(sql) {
            return Ok(st.clone());
        }
        let st = prepare(&pg_sql(sql)).map_err(|e| self.err(e))?;
        self.statements
            .borrow_mut()
            .insert(sql.to_string(), st.clone());
        Ok(st)
    }

    /// Runs `f` in one transaction (committed when `f` succeeds, rolled back otherwise).
    pub fn transaction<T>(
        &mut self,
        f: impl FnOnce(&dyn Sql) -> Result<T, Error>,
    ) -> Result<T, Error> {
        self.reopen_if_closed()?;
        let PgConn {
            client,
            statements,
            label,
            ..
        } = self;
        let client = client.get_mut();
        let tx = wait(client.transaction())
            .map_err(|e| Error::Internal(format!("database ({label}): {}", pg_error_text(&e))))?;
        let t = PgTx {
            tx,
            statements,
            label,
        };
        let out = f(&t)?;
        wait(t.tx.commit())
            .map_err(|e| Error::Internal(format!("database ({label}): {}", pg_error_text(&e))))?;
        Ok(out)
    }
}

/// The text of a PostgreSQL error: the server's message when it sent one.
fn pg_error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(c) = src {
                let t = c.to_string();
                if !s.contains(&t) {
                    s = format!("{s}: {t}");
                }
                src = c.source();
            }
            s
        }
    }
}

fn pg_args(args: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    args.iter().map(|a| a as &(dyn ToSql + Sync)).collect()
}

impl Sql for PgConn {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }
    fn execute(&self, sql: &str, args: &[Value]) -> Result<u64, Error> {
        self.reopen_if_closed()?;
        let client = self.client.borrow();
        let st = self.statement(|s| wait(client.prepare(s)), sql)?;
        wait(client.execute(&st, &pg_args(args))).map_err(|e| self.err(e))
    }
    fn query(&self, sql: &str, args: &[Value]) -> Result<Vec<Row>, Error> {
        self.reopen_if_closed()?;
        let client = self.client.borrow();
        let st = self.statement(|s| wait(client.prepare(s)), sql)?;
        let rows = wait(client.query(&st, &pg_args(args))).map_err(|e| self.err(e))?;
        rows.iter().map(pg_row).collect()
    }
    fn batch(&self, sql: &str) -> Result<(), Error> {
        self.reopen_if_closed()?;
        wait(self.client.borrow().batch_execute(sql)).map_err(|e| self.err(e))
    }
}

/// A PostgreSQL transaction ([`PgConn::transaction`]).
struct PgTx<'a> {
    tx: tokio_postgres::Transaction<'a>,
    statements: &'a RefCell<HashMap<String, tokio_postgres::Statement>>,
    label: &'a str,
}

impl PgTx<'_> {
    fn err(&self, e: tokio_postgres::Error) -> Error {
        Error::Internal(format!("database ({}): {}", self.label, pg_error_text(&e)))
    }
    fn statement(&self, sql: &str) -> Result<tokio_postgres::Statement, Error> {
        if let Some(st) = self.statements.borrow().get(sql) {
            return Ok(st.clone());
        }
        let st = wait(self.tx.prepare(&pg_sql(sql))).map_err(|e| self.err(e))?;
        self.statements
            .borrow_mut()
            .insert(sql.to_string(), st.clone());
        Ok(st)
    }
}

impl Sql for PgTx<'_> {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }
    fn execute(&self, sql: &str, args: &[Value]) -> Result<u64, Error> {
        let st = self.statement(sql)?;
        wait(self.tx.execute(&st, &pg_args(args))).map_err(|e| self.err(e))
    }
    fn query(&self, sql: &str, args: &[Value]) -> Result<Vec<Row>, Error> {
        let st = self.statement(sql)?;
        let rows = wait(self.tx.query(&st, &pg_args(args))).map_err(|e| self.err(e))?;
        rows.iter().map(pg_row).collect()
    }
    fn batch(&self, sql: &str) -> Result<(), Error> {
        wait(self.tx.batch_execute(sql)).map_err(|e| self.err(e))
    }
}

// ---------------------------------------------------------------------------------
// Either backend

/// A connection of either backend.
#[derive(Debug)]
pub enum Conn {
    Sqlite(rusqlite::Connection),
    Postgres(PgConn),
}

impl Conn {
    pub fn sql(&self) -> &dyn Sql {
        match self {
            Conn::Sqlite(c) => c,
            Conn::Postgres(c) => c,
        }
    }

    /// Runs `f` in one transaction (committed when `f` succeeds, rolled back otherwise).
    pub fn transaction<T>(
        &mut self,
        f: impl FnOnce(&dyn Sql) -> Result<T, Error>,
    ) -> Result<T, Error> {
        match self {
            Conn::Sqlite(c) => {
                let tx = c.transaction().map_err(sqlite_err)?;
                let out = f(&*tx)?;
                tx.commit().map_err(sqlite_err)?;
                Ok(out)
            }
            Conn::Postgres(c) => c.transaction(f),
        }
    }
}

/// A PostgreSQL connection of its own holding a session-level advisory lock: the
/// controller that holds it runs the singleton jobs ([`crate::store::Leader`]). The lock
/// lives as long as this connection: when the controller dies or its connection breaks,
/// the server releases it and another controller's next try takes it. Never reopened
/// behind the caller's back (a new connection would not hold the lock).
pub struct PgLock {
    client: tokio_postgres::Client,
    label: String,
}

impl PgLock {
    pub fn connect(url: &PgUrl) -> Result<PgLock, Error> {
        Ok(PgLock {
            client: PgConn::client(url)?,
            label: url.to_string(),
        })
    }

    /// Takes lock `key` if no other session holds it; true when this session holds it.
    pub fn try_take(&self, key: i64) -> Result<bool, Error> {
        let row = wait(
            self.client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&key]),
        )
        .map_err(|e| {
            Error::Internal(format!("database ({}): {}", self.label, pg_error_text(&e)))
        })?;
        Ok(row.get::<_, bool>(0))
    }

    /// True once the connection is known to be closed (no round trip).
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// True while the connection (and so any lock it took) is alive; asks the server.
    pub fn alive(&self) -> bool {
        !self.is_closed() && wait(self.client.simple_query("SELECT 1")).is_ok()
    }
}

/// How `n` rows split into multi-row statements: as many of `max` rows (a power of two)
/// as fit, then the rest in powers of two, largest first; so a connection prepares at
/// most `log2(max) + 1` shapes of a statement, whatever the row counts.
pub fn chunk_sizes(n: usize, max: usize) -> Vec<usize> {
    debug_assert!(max.is_power_of_two());
    let mut out = vec![max; n / max];
    let rest = n % max;
    let mut bit = max >> 1;
    while bit > 0 {
        if rest & bit != 0 {
            out.push(bit);
        }
        bit >>= 1;
    }
    out
}

/// `(?1, ?2), (?3, ?4)`: the placeholders of `rows` rows of `cols` values.
pub fn values_list(rows: usize, cols: usize) -> String {
    let mut sql = String::with_capacity(rows * cols * 5);
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for c in 0..cols {
            if c > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("?{}", r * cols + c + 1));
        }
        sql.push(')');
    }
    sql
}

/// Runs `{head} VALUES (...), (...) {tail}` over `values` (rows of `cols` values, in
/// order), 128 rows a statement at most (see [`chunk_sizes`]).
pub fn insert_rows(
    tx: &dyn Sql,
    head: &str,
    tail: &str,
    cols: usize,
    values: &[Value],
) -> Result<(), Error> {
    debug_assert_eq!(values.len() % cols, 0);
    let mut at = 0;
    for n in chunk_sizes(values.len() / cols, 128) {
        tx.execute(
            &format!("{head} VALUES {} {tail}", values_list(n, cols)),
            &values[at..at + n * cols],
        )?;
        at += n * cols;
    }
    Ok(())
}

/// The application name of the listening connection ([`listen`]), as
/// `pg_stat_activity` shows it.
pub const LISTENER_APP: &str = "gateway-controller-listen";

/// Listens for notifications on `channel` on a connection of its own, on a thread of its
/// own, and wakes `wake` for each, and once each time the connection is (re)opened (what
/// was sent while it was closed is lost: the woken side catches up by itself). A closed
/// connection is opened again after 0.25 s, doubling up to 5 s while the server does not
/// answer. Ends when `wake` has no other owner.
pub fn listen(
    url: &PgUrl,
    channel: &'static str,
    wake: &std::sync::Arc<tokio::sync::Notify>,
) -> Result<(), Error> {
    use std::time::Duration;
    let config = PgConn::config(url, LISTENER_APP);
    let label = url.to_string();
    let wake = std::sync::Arc::downgrade(wake);
    std::thread::Builder::new()
        .name("postgres-listen".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                tracing::error!("the PostgreSQL listener could not start its runtime");
                return;
            };
            rt.block_on(async move {
                let mut backoff = Duration::from_millis(250);
                let mut failing = false;
                while wake.strong_count() > 0 {
                    match config.connect(tokio_postgres::NoTls).await {
                        Ok((client, mut connection)) => {
                            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                            let driver = tokio::spawn(async move {
                                while let Some(m) =
                                    std::future::poll_fn(|cx| connection.poll_message(cx)).await
                                {
                                    match m {
                                        Ok(tokio_postgres::AsyncMessage::Notification(_)) => {
                                            if tx.send(()).is_err() {
                                                return;
                                            }
                                        }
                                        Ok(_) => {}
                                        Err(_) => return,
                                    }
                                }
                            });
                            if let Err(e) = client.batch_execute(&format!("LISTEN {channel}")).await
                            {
                                tracing::warn!(database = %label, error = %pg_error_text(&e), "LISTEN failed");
                            } else {
                                if failing {
                                    tracing::info!(database = %label, "listening for other controllers' changes again");
                                }
                                failing = false;
                                backoff = Duration::from_millis(250);
                                if let Some(w) = wake.upgrade() {
                                    w.notify_one();
                                }
                                loop {
                                    tokio::select! {
                                        m = rx.recv() => match (m, wake.upgrade()) {
                                            (Some(()), Some(w)) => w.notify_one(),
                                            _ => break,
                                        },
                                        () = tokio::time::sleep(Duration::from_secs(1)) => {
                                            if wake.strong_count() == 0 {
                                                break;
                                            }
                                        }
                                    }
                                }
                            }
                            driver.abort();
                            drop(client);
                            if wake.strong_count() == 0 {
                                return;
                            }
                            tracing::warn!(
                                database = %label,
                                "the connection listening for other controllers' changes closed: \
                                 reconnecting (changes are caught up by sequence meanwhile)"
                            );
                        }
                        Err(e) => {
                            if !failing {
                                tracing::warn!(
                                    database = %label,
                                    error = %pg_error_text(&e),
                                    "cannot listen for other controllers' changes: retrying"
                                );
                            }
                            failing = true;
                        }
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            });
        })
        .map_err(|e| Error::Internal(format!("starting the PostgreSQL listener thread: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_dollars() {
        assert_eq!(
            pg_sql("UPDATE t SET a = ?2 WHERE b = ?1 AND c = ?10"),
            "UPDATE t SET a = $2 WHERE b = $1 AND c = $10"
        );
    }

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            redact("postgres://app:s3cret@db.example:5432/zt"),
            "postgres://app:***@db.example:5432/zt"
        );
        assert_eq!(
            redact("postgresql://app@db/zt?password=s3cret&sslmode=disable"),
            "postgresql://app@db/zt?password=***&sslmode=disable"
        );
        assert_eq!(redact("postgres://db/zt"), "postgres://db/zt");
        let e = PgUrl::parse("postgres://app:s3cret@db:notaport/zt")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("s3cret"), "{e}");
        assert!(e.contains("postgres://app:***@db:notaport/zt"), "{e}");
    }
}
