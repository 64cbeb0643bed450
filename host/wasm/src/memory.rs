//! Reading and writing the guest's linear memory from a hostcall. A pointer outside the memory
//! is the guest's bug: it traps that call rather than returning a status the SDK cannot handle.

use crate::vm::HostState;
use wasmtime::{Caller, Error, Result};

fn memory(caller: &Caller<'_, HostState>) -> Result<wasmtime::Memory> {
    caller.data().memory.ok_or_else(|| Error::msg("the module exports no memory"))
}

fn out_of_bounds(ptr: u32, len: u32) -> Error {
    Error::msg(format!("guest pointer {ptr:#x}+{len} is outside its memory"))
}

/// Copies `len` bytes at `ptr` out of the guest.
pub fn read(caller: &Caller<'_, HostState>, ptr: u32, len: u32) -> Result<Vec<u8>> {
    if len == 0 {
        return Ok(Vec::new());
    }
    let data = memory(caller)?.data(caller);
    let (start, end) = (ptr as usize, ptr as usize + len as usize);
    data.get(start..end).map(<[u8]>::to_vec).ok_or_else(|| out_of_bounds(ptr, len))
}

/// The guest's whole memory and the host state at once, so a hostcall can use the guest's bytes
/// in place (no copy) while it changes the request.
pub fn split<'a>(caller: &'a mut Caller<'_, HostState>) -> Result<(&'a [u8], &'a mut HostState)> {
    let memory = memory(caller)?;
    let (data, host) = memory.data_and_store_mut(caller);
    Ok((data, host))
}

/// `len` bytes at `ptr` of a memory from [`split`].
pub fn slice(data: &[u8], ptr: u32, len: u32) -> Result<&[u8]> {
    let start = ptr as usize;
    data.get(start..start + len as usize).ok_or_else(|| out_of_bounds(ptr, len))
}

/// Like [`read`], as text; invalid UTF-8 is replaced, since names and messages are for humans.
pub fn read_string(caller: &Caller<'_, HostState>, ptr: u32, len: u32) -> Result<String> {
    Ok(String::from_utf8(read(caller, ptr, len)?)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

/// Guest bytes as text without a copy when they are valid UTF-8, as header names nearly always
/// are (`from_utf8` checks a word at a time; `from_utf8_lossy` alone walks them in chunks).
pub fn text(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.into(),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

pub fn write(caller: &mut Caller<'_, HostState>, ptr: u32, bytes: &[u8]) -> Result<()> {
    let memory = memory(caller)?;
    memory.write(caller, ptr as usize, bytes).map_err(|_| out_of_bounds(ptr, bytes.len() as u32))
}

pub fn write_u32(caller: &mut Caller<'_, HostState>, ptr: u32, value: u32) -> Result<()> {
    write(caller, ptr, &value.to_le_bytes())
}

pub fn write_u64(caller: &mut Caller<'_, HostState>, ptr: u32, value: u64) -> Result<()> {
    write(caller, ptr, &value.to_le_bytes())
}

/// Hands `bytes` to the guest: memory from the guest's own allocator, its address and size written
/// at `ptr_out` and `size_out`. Nothing is allocated for empty bytes (the SDK reads null as empty).
pub fn give(caller: &mut Caller<'_, HostState>, bytes: &[u8], ptr_out: u32, size_out: u32) -> Result<()> {
    if bytes.is_empty() {
        write_u32(caller, ptr_out, 0)?;
        return write_u32(caller, size_out, 0);
    }
    // An `Arc` clone: cloning the `TypedFunc` itself would take the engine's type registry.
    let allocate = caller.data().allocate.clone().ok_or_else(|| Error::msg("the module exports no allocator"))?;
    let address = allocate.call(&mut *caller, bytes.len() as u32)?;
    if address == 0 {
        return Err(Error::msg(format!("the guest allocator returned null for {} bytes", bytes.len())));
    }
    write(caller, address, bytes)?;
    write_u32(caller, ptr_out, address)?;
    write_u32(caller, size_out, bytes.len() as u32)
}

/// Scratch buffers larger than this are not kept for the next hostcall (a large body read once).
const SCRATCH_KEPT: usize = 64 * 1024;

/// Hands the guest what `fill` writes, without a host allocation per call: `fill` gets the guest's
/// memory (to read its arguments in place), the host state, and the instance's scratch buffer,
/// emptied; it answers whether there is a value. Returns that answer (`false`: nothing was given).
pub fn give_from(
    caller: &mut Caller<'_, HostState>,
    ptr_out: u32,
    size_out: u32,
    fill: impl FnOnce(&[u8], &HostState, &mut Vec<u8>) -> Result<bool>,
) -> Result<bool> {
    let mut scratch = std::mem::take(&mut caller.data_mut().scratch);
    scratch.clear();
    let filled = {
        let (data, host) = split(caller)?;
        fill(data, host, &mut scratch)
    };
    let given = match filled {
        Ok(true) => give(caller, &scratch, ptr_out, size_out).map(|()| true),
        other => other,
    };
    if scratch.capacity() <= SCRATCH_KEPT {
        caller.data_mut().scratch = scratch;
    }
    given
}
