// node-tar 7.5's type declarations name zlib's zstd streams, which Node 22 added and
// @types/node 20 lacks. meshcc never uses zstd (Node 20 cannot run it); these empty
// declarations only let the compiler read tar's types.
import 'node:zlib'
declare module 'zlib' {
  class ZstdCompress extends Gzip {}
  class ZstdDecompress extends Gunzip {}
}
