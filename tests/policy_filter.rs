//! The built-in policy filter in a real weft (being written).
#![allow(unused)]

mod support;
