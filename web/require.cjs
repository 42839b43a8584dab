'use strict';
// require('tqkv') in Node. tqkv is an ES module (it finds its .wasm files through
// import.meta.url); Node >= 20.19 and >= 22.12 load ES modules with require(), so this hands out
// the one ES module instance (no second CommonJS copy with its own classes and default instance).
// Older Node cannot: say how to load it instead.
try {
  module.exports = require('./dist/node.js');
} catch (e) {
  if (e && e.code === 'ERR_REQUIRE_ESM')
    throw new Error(
      "tqkv is an ES module: require('tqkv') needs Node >= 20.19 or >= 22.12 (require of ES modules). " +
        "On this Node (" + process.version + ") use `const { Tqkv } = await import('tqkv')` instead.",
      { cause: e },
    );
  throw e;
}
