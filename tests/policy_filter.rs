//! The built-in policy filter in a real weft (being written).

mod support;
