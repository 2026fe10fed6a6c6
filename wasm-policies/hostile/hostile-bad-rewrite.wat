;; world: dns-policy
;; Hostile: rewrites every query to a name no resolver can ask for (spaces, "!"); the host
;; must treat the answer as bad output.
(module
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (data (i32.const 1024) "not a dns name!!!!!!!!!!!!!")
  (data (i32.const 1100) "rewritten")
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32)
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.sub (local.get 2) (i32.const 1)))
                           (i32.sub (i32.const 0) (local.get 2))))
    (global.set $heap (i32.add (local.get $p) (local.get 3)))
    (local.get $p))
  (func (export "validate-settings") (param i32 i32) (result i32)
    (i32.store8 (i32.const 16) (i32.const 0))
    (i32.const 16))
  ;; dns-decision at 64: verdict discriminant 2 (rewrite) at 64, its string at 68 (ptr) and 72
  ;; (len); the reason at 76 (ptr) and 80 (len)
  (func (export "check-dns")
    (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)
    (i32.store8 (i32.const 64) (i32.const 2))
    (i32.store (i32.const 68) (i32.const 1024))
    (i32.store (i32.const 72) (i32.const 27))
    (i32.store (i32.const 76) (i32.const 1100))
    (i32.store (i32.const 80) (i32.const 9))
    (i32.const 64)))
