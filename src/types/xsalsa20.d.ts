// xsalsa20 (a CommonJS module without types): the cipher @libp2p/pnet uses, patched in
// src/mesh/patches/pnet-cipher.ts, which declares the shape it relies on.
declare module 'xsalsa20' {
  const xsalsa20: unknown
  export default xsalsa20
}
