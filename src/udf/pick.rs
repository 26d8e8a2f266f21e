//! `pick_key` and `pick_value`: survivorship as one aggregate. `min(pick_key(...))` over
//! a customer's records is the record that sorts first in the given order, carrying the
//! values it gives; `pick_value` reads them back. DataFusion's ordered `first_value`
//! keeps each group's ordering keys as scalar values (16 s of a 200k-person run), and a
//! sort per attribute reads and sorts every record six times; `min` over bytes is a
//! vectorised accumulator, so every attribute is chosen in one pass.
//!
//! A key is the order columns in Arrow's row format (bytes that compare as the rows
//! sort), then the values, then the order part's length (4 bytes, little-endian). The
//! order columns end with a record's unique id, so two keys never tie on the order part
//! and the values never decide.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BinaryArray, StringBuilder};
use datafusion::arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use datafusion::arrow::compute::SortOptions;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::{Result, exec_datafusion_err, exec_err};

use super::as_text;

/// One order column's direction in `pick_key`'s first argument: `a` ascending, `d`
/// descending; nulls sort last either way (`NULLS LAST`).
fn sort_options(name: &str, direction: char) -> Result<SortOptions> {
    match direction {
        'a' => Ok(SortOptions { descending: false, nulls_first: false }),
        'd' => Ok(SortOptions { descending: true, nulls_first: false }),
        other => exec_err!("{name}: direction `{other}` is neither `a` (ascending) nor `d` (descending)"),
    }
}

/// `pick_key(directions, order columns..., values...)`: per row, bytes whose order is the
/// rows' order by the order columns (one per character of `directions`), with the
/// values (as text) behind them.
pub fn pick_keys(name: &str, directions: &str, columns: &[ArrayRef], rows: usize) -> Result<ArrayRef> {
    let order_count = directions.chars().count();
    if columns.len() < order_count {
        return exec_err!("{name}: {order_count} order columns named, {} given", columns.len());
    }
    let (order, values) = columns.split_at(order_count);
    let fields: Vec<SortField> = directions
        .chars()
        .zip(order)
        .map(|(d, c)| Ok(SortField::new_with_options(c.data_type().clone(), sort_options(name, d)?)))
        .collect::<Result<_>>()?;
    let converter = RowConverter::new(fields)?;
    let ordered = converter.convert_columns(order)?;
    let texts: Vec<ArrayRef> = values.iter().map(as_text).collect::<Result<_>>()?;
    let texts: Vec<super::Texts> = texts.iter().map(|a| super::Texts::of(name, a)).collect::<Result<_>>()?;
    // Written straight into one buffer: the keys are most of what the aggregate reads.
    let mut bytes: Vec<u8> = Vec::with_capacity(ordered.size() + rows * 32);
    let mut offsets: Vec<i32> = Vec::with_capacity(rows + 1);
    offsets.push(0);
    for row in 0..rows {
        let order = ordered.row(row);
        bytes.extend_from_slice(order.as_ref());
        for text in &texts {
            match text.get(row) {
                None => bytes.push(0),
                Some(v) => {
                    bytes.push(1);
                    bytes.extend_from_slice(&length(name, v.len())?.to_le_bytes());
                    bytes.extend_from_slice(v.as_bytes());
                }
            }
        }
        bytes.extend_from_slice(&length(name, order.as_ref().len())?.to_le_bytes());
        offsets
            .push(i32::try_from(bytes.len()).map_err(|_| exec_datafusion_err!("{name}: keys of a batch over 2 GB"))?);
    }
    let offsets = OffsetBuffer::new(ScalarBuffer::from(offsets));
    Ok(Arc::new(BinaryArray::new(offsets, Buffer::from_vec(bytes), None)))
}

fn length(name: &str, len: usize) -> Result<u32> {
    u32::try_from(len).map_err(|_| exec_datafusion_err!("{name}: a value of {len} bytes is too long"))
}

/// `pick_value(key, index)`: the value at `index` (from 0) of a `pick_key`, as text; null
/// for a null key or value.
pub fn pick_values(name: &str, keys: &ArrayRef, index: usize) -> Result<ArrayRef> {
    let keys = match keys.data_type() {
        DataType::Binary => keys.as_binary::<i32>(),
        DataType::Null => return Ok(datafusion::arrow::array::new_null_array(&DataType::Utf8, keys.len())),
        other => return exec_err!("{name}: expected the bytes of pick_key, got {other}"),
    };
    let mut b = StringBuilder::with_capacity(keys.len(), keys.len() * 16);
    for key in keys.iter() {
        match key {
            None => b.append_null(),
            Some(key) => b.append_option(
                value_at(key, index)
                    .ok_or_else(|| exec_datafusion_err!("{name}: not a key of pick_key, or no value {index} in it"))?,
            ),
        }
    }
    Ok(Arc::new(b.finish()))
}

/// The value at `index` of one key: `None` when the bytes are not a key.
fn value_at(key: &[u8], index: usize) -> Option<Option<&str>> {
    let (rest, tail) = key.split_at_checked(key.len().checked_sub(4)?)?;
    let order_len = u32::from_le_bytes(tail.try_into().ok()?) as usize;
    let mut values = rest.get(order_len..)?;
    let mut i = 0;
    loop {
        let (&flag, after) = values.split_first()?;
        let value = match flag {
            0 => {
                values = after;
                None
            }
            1 => {
                let (len, after) = after.split_at_checked(4)?;
                let len = u32::from_le_bytes(len.try_into().ok()?) as usize;
                let (text, after) = after.split_at_checked(len)?;
                values = after;
                Some(std::str::from_utf8(text).ok()?)
            }
            _ => return None,
        };
        if i == index {
            return Some(value);
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{BooleanArray, Int64Array, StringArray};

    /// The smallest key is the first row in the order, whatever the directions, nulls
    /// last; its values read back, a null value as null.
    #[test]
    fn the_smallest_key_is_the_first_row_and_carries_its_values() {
        let recent: ArrayRef = Arc::new(Int64Array::from(vec![Some(5), None, Some(9), Some(9)]));
        let initials: ArrayRef = Arc::new(BooleanArray::from(vec![false, false, true, false]));
        let id: ArrayRef = Arc::new(StringArray::from(vec!["b", "a", "c", "d"]));
        let value: ArrayRef = Arc::new(StringArray::from(vec![Some("x"), Some("y"), Some("z"), None]));
        let date: ArrayRef = Arc::new(datafusion::arrow::array::Date32Array::from(vec![1, 2, 3, 4]));
        let order = vec![initials, recent, id];
        let keys = pick_keys("k", "ada", &[order.clone(), vec![value.clone(), date.clone()]].concat(), 4).unwrap();
        let keys = keys.as_binary::<i32>();
        let mut rows: Vec<usize> = (0..4).collect();
        rows.sort_by_key(|&r| keys.value(r));
        // Not initials first; then the most recent (9 before 5, null last); then the id.
        assert_eq!(rows, vec![3, 0, 1, 2]);
        let keys: ArrayRef = Arc::new(keys.clone());
        let first = pick_values("v", &keys, 0).unwrap();
        let first = first.as_string::<i32>();
        assert_eq!(first.iter().collect::<Vec<_>>(), vec![Some("x"), Some("y"), Some("z"), None]);
        let second = pick_values("v", &keys, 1).unwrap();
        assert_eq!(second.as_string::<i32>().value(3), "1970-01-05");
        assert!(pick_values("v", &keys, 2).is_err(), "no third value");
        assert!(pick_keys("k", "ax", &order, 4).is_err(), "an unknown direction is refused");
    }
}
