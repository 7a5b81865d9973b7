{
  "targets": [
    {
      "target_name": "flint_sys",
      "sources": ["native/flint_sys.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]
    },
    {
      "target_name": "flint_jail",
      "type": "executable",
      "sources": ["native/flint_jail.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]
    }
  ]
}
