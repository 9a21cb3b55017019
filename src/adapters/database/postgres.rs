//! PostgreSQL for the `database` adapters: columns read into JSON by their type, parameters
//! written in the type the server inferred for them (so `:total` binds as `numeric` where
//! the statement compares it with a numeric column), transactions with a savepoint per
//! message.

use super::{DbError, Decimals, Params, Settings, Sql};
use base64::Engine as _;
use bytes::{BufMut, BytesMut};
use serde_json::{Map, Number, Value};
use std::error::Error as StdError;
use tokio_postgres::types::{FromSql, IsNull, Kind, ToSql, Type};
use tokio_postgres::Client;

type BoxError = Box<dyn StdError + Sync + Send>;

pub struct Connection {
    client: Client,
}

impl Connection {
    pub async fn open(settings: &Settings) -> Result<Connection, DbError> {
        let client = crate::store::postgres::open_client(&settings.url, "switchyard adapter")
            .await
            .map_err(DbError::retryable)?;
        client
            .batch_execute(&format!(
                "SET statement_timeout = {}",
                settings.statement_timeout.as_millis()
            ))
            .await
            .map_err(error)?;
        Ok(Connection { client })
    }

    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    pub async fn query(
        &mut self,
        sql: &Sql,
        params: &Params,
        decimals: Decimals,
    ) -> Result<Vec<Map<String, Value>>, DbError> {
        let statement = self.client.prepare(&sql.numbered).await.map_err(error)?;
        let bound = bind(sql, statement.params(), params)?;
        let refs: Vec<&(dyn ToSql + Sync)> = bound.iter().map(|p| p as _).collect();
        let rows = self.client.query(&statement, &refs).await.map_err(error)?;
        rows.iter()
            .map(|row| {
                let mut object = Map::with_capacity(row.len());
                for (i, column) in row.columns().iter().enumerate() {
                    let value = row.try_get::<_, Json>(i).map_err(|e| {
                        DbError::permanent(format!("column `{}`: {}", column.name(), cause(&e)))
                    })?;
                    object.insert(column.name().to_string(), value.into_json(decimals));
                }
                Ok(object)
            })
            .collect()
    }

    pub async fn execute_each(
        &mut self,
        sql: &Sql,
        each: Vec<Result<Params, DbError>>,
    ) -> Result<Vec<Result<u64, DbError>>, DbError> {
        let statement = self.client.prepare(&sql.numbered).await.map_err(error)?;
        // Parameters that cannot be written fail their message alone, before the database.
        let bound: Vec<Result<Vec<Param<'_>>, DbError>> = each
            .iter()
            .map(|p| match p {
                Ok(p) => bind(sql, statement.params(), p),
                Err(e) => Err(e.clone()),
            })
            .collect();
        // First all at once, pipelined in one transaction: one round trip for the batch. Only
        // if a statement fails is the batch run again with a savepoint per message, so the
        // failing one is undone alone.
        let tx = self.client.transaction().await.map_err(error)?;
        let runs = bound.iter().map(|b| {
            let (tx, statement) = (&tx, &statement);
            async move {
                match b {
                    Ok(b) => {
                        let refs: Vec<&(dyn ToSql + Sync)> = b.iter().map(|p| p as _).collect();
                        Some(tx.execute(statement, &refs).await)
                    }
                    Err(_) => None,
                }
            }
        });
        let ran = futures_util::future::join_all(runs).await;
        if ran.iter().all(|r| !matches!(r, Some(Err(_)))) {
            tx.commit().await.map_err(error)?;
            return Ok(ran
                .into_iter()
                .zip(bound)
                .map(|(r, b)| match (r, b) {
                    (Some(Ok(n)), _) => Ok(n),
                    (_, Err(e)) => Err(e),
                    _ => Err(DbError::retryable("no result")),
                })
                .collect());
        }
        tx.rollback().await.map_err(error)?;
        let mut tx = self.client.transaction().await.map_err(error)?;
        let mut results = Vec::with_capacity(bound.len());
        for b in bound {
            let b = match b {
                Ok(b) => b,
                Err(e) => {
                    results.push(Err(e));
                    continue;
                }
            };
            let refs: Vec<&(dyn ToSql + Sync)> = b.iter().map(|p| p as _).collect();
            let sp = tx.savepoint("switchyard").await.map_err(error)?;
            match sp.execute(&statement, &refs).await {
                Ok(n) => {
                    sp.commit().await.map_err(error)?;
                    results.push(Ok(n));
                }
                Err(e) => {
                    let e = error(e);
                    sp.rollback().await.map_err(error)?;
                    results.push(Err(e));
                }
            }
        }
        tx.commit().await.map_err(error)?;
        Ok(results)
    }
}

/// The server's reason, classified: data and constraint errors and bad statements are
/// permanent; lost connections, timeouts, deadlocks and the rest may pass on a retry.
fn error(e: tokio_postgres::Error) -> DbError {
    let text = crate::store::postgres::describe_error(&e);
    match e.code().map(|c| c.code()) {
        // 22: data exception; 23: integrity constraint violation; 42: syntax or access rule;
        // 0A: feature not supported.
        Some(c) if ["22", "23", "42", "0A"].iter().any(|p| c.starts_with(p)) => {
            DbError::permanent(text)
        }
        _ => DbError::retryable(text),
    }
}

fn cause(e: &tokio_postgres::Error) -> String {
    match e.source() {
        Some(s) => s.to_string(),
        None => e.to_string(),
    }
}

/// Each parameter converted for the type the server inferred for it.
fn bind<'a>(sql: &Sql, types: &[Type], params: &'a Params) -> Result<Vec<Param<'a>>, DbError> {
    params
        .iter()
        .zip(types)
        .zip(&sql.names)
        .map(|((value, ty), name)| {
            check(value, ty).map_err(|e| {
                DbError::permanent(format!("parameter :{name} ({}): {e}", ty.name()))
            })?;
            Ok(Param(value))
        })
        .collect()
}

/// Checks ahead of sending that `value` can be written as `ty`, so a bad value is named with
/// its parameter (a failed `to_sql` only says "error serializing parameter 3").
fn check(value: &Value, ty: &Type) -> Result<(), String> {
    let mut scratch = BytesMut::new();
    write(value, ty, &mut scratch)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// A JSON value written as whatever type the statement's parameter has.
#[derive(Debug)]
struct Param<'a>(&'a Value);

impl ToSql for Param<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        write(self.0, ty, out)
    }
    fn accepts(_: &Type) -> bool {
        true
    }
    tokio_postgres::types::to_sql_checked!();
}

fn text_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn write(value: &Value, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
    if value.is_null() {
        return Ok(IsNull::Yes);
    }
    let text = || text_of(value);
    let number = |what: &str| -> Result<String, BoxError> {
        match value {
            Value::Number(n) => Ok(n.to_string()),
            Value::String(s) => Ok(s.trim().to_string()),
            Value::Bool(b) => Ok((*b as u8).to_string()),
            _ => Err(format!("{value} is not {what}").into()),
        }
    };
    if let Kind::Array(_) = ty.kind() {
        let Value::Array(items) = value else {
            return Err(format!("{value} is not an array").into());
        };
        // Each item is written as the member type by `Param` itself.
        let items: Vec<Param<'_>> = items.iter().map(Param).collect();
        return items.to_sql(ty, out);
    }
    match *ty {
        Type::BOOL => {
            let b = match value {
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => match s.to_ascii_lowercase().as_str() {
                    "true" | "t" | "yes" | "y" | "1" => true,
                    "false" | "f" | "no" | "n" | "0" => false,
                    _ => return Err(format!("`{s}` is not a boolean").into()),
                },
                _ => return Err(format!("{value} is not a boolean").into()),
            };
            b.to_sql(ty, out)
        }
        Type::INT2 => parse::<i16>(&number("an integer")?)?.to_sql(ty, out),
        Type::INT4 => parse::<i32>(&number("an integer")?)?.to_sql(ty, out),
        Type::INT8 => parse::<i64>(&number("an integer")?)?.to_sql(ty, out),
        Type::OID => parse::<u32>(&number("an integer")?)?.to_sql(ty, out),
        Type::FLOAT4 => parse::<f32>(&number("a number")?)?.to_sql(ty, out),
        Type::FLOAT8 => parse::<f64>(&number("a number")?)?.to_sql(ty, out),
        Type::NUMERIC => {
            let n = number("a number")?;
            numeric_write(&n, out).ok_or_else(|| format!("`{n}` is not a decimal number"))?;
            Ok(IsNull::No)
        }
        Type::UUID => parse::<uuid::Uuid>(&text())?.to_sql(ty, out),
        Type::JSON | Type::JSONB => value.to_sql(ty, out),
        Type::TIMESTAMPTZ => {
            let t = chrono::DateTime::parse_from_rfc3339(&text())
                .map_err(|e| format!("`{}` is not an RFC 3339 time with a zone: {e}", text()))?;
            t.with_timezone(&chrono::Utc).to_sql(ty, out)
        }
        Type::TIMESTAMP => {
            let t = text();
            let t = t.trim_end_matches('Z');
            chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f")
                .or_else(|_| chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f"))
                .map_err(|e| format!("`{t}` is not a date and time (2026-12-01T10:00:00): {e}"))?
                .to_sql(ty, out)
        }
        Type::DATE => parse::<chrono::NaiveDate>(&text())?.to_sql(ty, out),
        Type::TIME => parse::<chrono::NaiveTime>(&text())?.to_sql(ty, out),
        Type::BYTEA => {
            let b = base64::engine::general_purpose::STANDARD
                .decode(text())
                .map_err(|e| format!("bytea parameters are base64: {e}"))?;
            b.to_sql(ty, out)
        }
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
            out.put_slice(text().as_bytes());
            Ok(IsNull::No)
        }
        _ if matches!(ty.kind(), Kind::Enum(_)) || ty.name() == "citext" => {
            out.put_slice(text().as_bytes());
            Ok(IsNull::No)
        }
        _ => Err(format!(
            "Switchyard cannot write type {}; cast the parameter in the statement (CAST(:name AS text))",
            ty.name()
        )
        .into()),
    }
}

fn parse<T: std::str::FromStr>(s: &str) -> Result<T, BoxError>
where
    T::Err: std::fmt::Display,
{
    s.parse::<T>().map_err(|e| format!("`{s}`: {e}").into())
}

/// A column's value as read, before it becomes JSON (which needs the `decimals` setting).
enum Json {
    Value(Value),
    /// A `numeric`, exact.
    Decimal(String),
    Array(Vec<Json>),
}

impl Json {
    fn into_json(self, decimals: Decimals) -> Value {
        match self {
            Json::Value(v) => v,
            Json::Decimal(d) => match decimals {
                Decimals::String => Value::String(d),
                // NaN and infinities stay strings: JSON has no numbers for them.
                Decimals::Number => serde_json::from_str::<Number>(&d)
                    .map(Value::Number)
                    .unwrap_or(Value::String(d)),
            },
            Json::Array(items) => {
                Value::Array(items.into_iter().map(|i| i.into_json(decimals)).collect())
            }
        }
    }
}

impl<'a> FromSql<'a> for Json {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        if let Kind::Array(_) = ty.kind() {
            let items = Vec::<Json>::from_sql(ty, raw)?;
            return Ok(Json::Array(items));
        }
        let float = |f: f64| match Number::from_f64(f) {
            Some(n) => Value::Number(n),
            None => Value::String(f.to_string()),
        };
        let v = match *ty {
            Type::BOOL => Value::Bool(bool::from_sql(ty, raw)?),
            Type::INT2 => i16::from_sql(ty, raw)?.into(),
            Type::INT4 => i32::from_sql(ty, raw)?.into(),
            Type::INT8 => i64::from_sql(ty, raw)?.into(),
            Type::OID => u32::from_sql(ty, raw)?.into(),
            Type::FLOAT4 => float(f32::from_sql(ty, raw)? as f64),
            Type::FLOAT8 => float(f64::from_sql(ty, raw)?),
            Type::NUMERIC => return Ok(Json::Decimal(numeric_read(raw)?)),
            Type::UUID => Value::String(uuid::Uuid::from_sql(ty, raw)?.to_string()),
            Type::JSON | Type::JSONB => Value::from_sql(ty, raw)?,
            Type::TIMESTAMPTZ => Value::String(
                chrono::DateTime::<chrono::Utc>::from_sql(ty, raw)?
                    .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            ),
            Type::TIMESTAMP => Value::String(
                chrono::NaiveDateTime::from_sql(ty, raw)?
                    .format("%Y-%m-%dT%H:%M:%S%.f")
                    .to_string(),
            ),
            Type::DATE => Value::String(chrono::NaiveDate::from_sql(ty, raw)?.to_string()),
            Type::TIME => Value::String(chrono::NaiveTime::from_sql(ty, raw)?.to_string()),
            Type::BYTEA => Value::String(base64::engine::general_purpose::STANDARD.encode(raw)),
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                Value::String(std::str::from_utf8(raw)?.to_string())
            }
            // Enums and citext travel as their text.
            _ if matches!(ty.kind(), Kind::Enum(_)) || ty.name() == "citext" => {
                Value::String(std::str::from_utf8(raw)?.to_string())
            }
            _ => {
                return Err(format!(
                    "Switchyard cannot read type {}; cast the column in the query (`col::text`)",
                    ty.name()
                )
                .into())
            }
        };
        Ok(Json::Value(v))
    }

    fn from_sql_null(_: &Type) -> Result<Self, BoxError> {
        Ok(Json::Value(Value::Null))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_PINF: u16 = 0xD000;
const NUMERIC_NINF: u16 = 0xF000;

/// PostgreSQL's binary `numeric` (base-10000 digits, a weight, a sign and the display
/// scale) as exact decimal text.
fn numeric_read(raw: &[u8]) -> Result<String, BoxError> {
    let word = |i: usize| -> Result<u16, BoxError> {
        raw.get(i..i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "a numeric value is cut short".into())
    };
    let ndigits = word(0)? as usize;
    let weight = word(2)? as i16 as i32;
    let sign = word(4)?;
    let dscale = word(6)? as usize;
    match sign {
        NUMERIC_NAN => return Ok("NaN".into()),
        NUMERIC_PINF => return Ok("Infinity".into()),
        NUMERIC_NINF => return Ok("-Infinity".into()),
        _ => {}
    }
    let digits: Vec<u16> = (0..ndigits)
        .map(|i| word(8 + 2 * i))
        .collect::<Result<_, _>>()?;
    let digit = |k: i32| -> u16 {
        // The base-10000 digit of weight `k` (10000^k).
        let index = weight - k;
        if index >= 0 && (index as usize) < digits.len() {
            digits[index as usize]
        } else {
            0
        }
    };
    let mut s = String::new();
    if sign == NUMERIC_NEG {
        s.push('-');
    }
    if weight < 0 {
        s.push('0');
    } else {
        for k in (0..=weight).rev() {
            if k == weight {
                s.push_str(&digit(k).to_string());
            } else {
                s.push_str(&format!("{:04}", digit(k)));
            }
        }
    }
    if dscale > 0 {
        s.push('.');
        let mut frac = String::new();
        let mut k = -1;
        while frac.len() < dscale {
            frac.push_str(&format!("{:04}", digit(k)));
            k -= 1;
        }
        frac.truncate(dscale);
        s.push_str(&frac);
    }
    Ok(s)
}

/// Decimal text (`-12.50`, `1e3`) as PostgreSQL's binary `numeric`; `None` when it is not a
/// number.
fn numeric_write(text: &str, out: &mut BytesMut) -> Option<()> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(i) => (&unsigned[..i], unsigned[i + 1..].parse::<i32>().ok()?),
        None => (unsigned, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
    {
        return None;
    }
    // The digits, and how many of them stand before the point once the exponent is applied.
    let digits = format!("{int}{frac}");
    let point = int.len() as i64 + exponent as i64;
    let (mut int_part, mut frac_part) = if point <= 0 {
        (
            String::new(),
            format!("{}{digits}", "0".repeat((-point) as usize)),
        )
    } else if point as usize >= digits.len() {
        (
            format!("{digits}{}", "0".repeat(point as usize - digits.len())),
            String::new(),
        )
    } else {
        (
            digits[..point as usize].to_string(),
            digits[point as usize..].to_string(),
        )
    };
    let dscale = frac_part.len() as u16;
    // Whole base-10000 groups on both sides of the point.
    int_part.insert_str(0, &"0".repeat((4 - int_part.len() % 4) % 4));
    frac_part.push_str(&"0".repeat((4 - frac_part.len() % 4) % 4));
    let point_in_padded = int_part.len() as i32;
    let padded = format!("{int_part}{frac_part}");
    let mut groups: Vec<i16> = padded
        .as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).ok().and_then(|s| s.parse().ok()))
        .collect::<Option<_>>()?;
    let mut weight = point_in_padded / 4 - 1;
    while groups.first() == Some(&0) {
        groups.remove(0);
        weight -= 1;
    }
    while groups.last() == Some(&0) {
        groups.pop();
    }
    if groups.is_empty() {
        weight = 0;
    }
    out.put_i16(groups.len() as i16);
    out.put_i16(weight as i16);
    out.put_u16(if negative && !groups.is_empty() {
        NUMERIC_NEG
    } else {
        0
    });
    out.put_u16(dscale);
    for g in groups {
        out.put_i16(g);
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numerics_go_both_ways_exactly() {
        for (text, back) in [
            ("0", "0"),
            ("12.50", "12.50"),
            ("-12.5", "-12.5"),
            (
                "123456789012345678901234567890.000000001",
                "123456789012345678901234567890.000000001",
            ),
            ("0.0001", "0.0001"),
            ("0.00001", "0.00001"),
            ("10000", "10000"),
            ("1e3", "1000"),
            ("1.5e-2", "0.015"),
            ("99999999.99", "99999999.99"),
        ] {
            let mut out = BytesMut::new();
            numeric_write(text, &mut out).unwrap();
            assert_eq!(numeric_read(&out).unwrap(), back, "{text}");
        }
        assert!(numeric_write("12a", &mut BytesMut::new()).is_none());
        assert!(numeric_write("", &mut BytesMut::new()).is_none());
    }
}
