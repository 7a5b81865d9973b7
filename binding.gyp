{
  "targets": [
    {
      "target_name": "flint_sys",
      "sources": ["native/flint_sys.c", "native/flint_shared_view.cc"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "cflags_cc": ["-std=c++17"]
    },
    {
      "target_name": "flint_jail",
      "type": "executable",
      "sources": ["native/flint_jail.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]
    }
  ]
}
