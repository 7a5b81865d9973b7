{
  "targets": [
    {
      "target_name": "flint_sys",
      "sources": ["native/flint_sys.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]
    }
  ]
}
