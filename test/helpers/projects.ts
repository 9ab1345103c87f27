// Small but real C and C++ projects for end-to-end tests: several translation units,
// shared headers, a warning, C++ templates and an anonymous namespace, a Makefile with
// dependency files, and a CMakeLists.txt.
import { writeTree } from './meshcc.js'

export const C_UNITS = ['main', 'list', 'strutil', 'mathx', 'table', 'warn']
export const CXX_UNITS = ['app', 'shapes', 'registry', 'parser']

export function writeCProject(root: string): void {
  const files: Record<string, string> = {
    'include/common.h': '#ifndef COMMON_H\n#define COMMON_H\n#include <stddef.h>\n#define MAX_ITEMS 64\nstruct item { int id; const char *name; };\nint list_sum(const int *v, size_t n);\nsize_t str_count(const char *s, char c);\ndouble mathx_poly(double x);\nint table_lookup(int k);\nint warn_me(int x);\n#endif\n',
    'include/util/inline.h': '#ifndef INLINE_H\n#define INLINE_H\nstatic inline int sq(int x) { return x * x; }\n#endif\n',
    'src/main.c': '#include <stdio.h>\n#include "common.h"\n#include "util/inline.h"\nint main(void) {\n  int v[] = {1, 2, 3};\n  printf("%d %zu %.2f %d %d\\n", list_sum(v, 3), str_count("banana", \'a\'), mathx_poly(2.0), table_lookup(3), sq(warn_me(2)));\n  return 0;\n}\n',
    'src/list.c': '#include "common.h"\nint list_sum(const int *v, size_t n) { int s = 0; for (size_t i = 0; i < n; i++) s += v[i]; return s; }\n',
    'src/strutil.c': '#include <string.h>\n#include "common.h"\nsize_t str_count(const char *s, char c) { size_t n = 0; for (; *s; s++) n += (*s == c); return n; }\n',
    'src/mathx.c': '#include <math.h>\n#include "common.h"\ndouble mathx_poly(double x) { return 3.0 * x * x + sqrt(x) + __LINE__; }\n',
    'src/table.c': '#include "common.h"\nstatic const struct item items[MAX_ITEMS] = { {1, "one"}, {2, "two"}, {3, "three"} };\nint table_lookup(int k) { for (int i = 0; i < MAX_ITEMS; i++) if (items[i].id == k) return i; return -1; }\n',
    'src/warn.c': '#include "common.h"\nint warn_me(int x) {\n  int unused_variable;\n  return x + 1;\n}\n',
    Makefile: [
      'CC ?= gcc',
      'CFLAGS ?= -O2 -g -Wall',
      'OBJS = ' + C_UNITS.map((u) => `build/${u}.o`).join(' '),
      'all: build/app',
      'build/app: $(OBJS)',
      '\t$(CC) $(OBJS) -lm -o $@',
      'build/%.o: src/%.c',
      '\t@mkdir -p build',
      '\t$(CC) $(CFLAGS) -Iinclude -MMD -MP -c $< -o $@',
      'clean:',
      '\trm -rf build',
      '-include $(OBJS:.o=.d)',
      ''
    ].join('\n')
  }
  writeTree(root, files)
}

export function writeCxxProject(root: string): void {
  const files: Record<string, string> = {
    'include/shapes.hpp': '#pragma once\n#include <memory>\n#include <string>\n#include <vector>\nstruct Shape { virtual ~Shape() = default; virtual double area() const = 0; virtual std::string name() const = 0; };\nstd::vector<std::unique_ptr<Shape>> make_shapes();\n',
    'include/registry.hpp': '#pragma once\n#include <map>\n#include <string>\ntemplate <typename T> class Registry { public: void add(const std::string &k, T v) { m_[k] = v; } T get(const std::string &k) const { auto it = m_.find(k); return it == m_.end() ? T{} : it->second; } std::size_t size() const { return m_.size(); } private: std::map<std::string, T> m_; };\nRegistry<int> &global_registry();\n',
    'src/app.cpp': '#include <iostream>\n#include "shapes.hpp"\n#include "registry.hpp"\nint parse_sum(const std::string &);\nint main() { double total = 0; for (auto &s : make_shapes()) total += s->area(); global_registry().add("x", 3); std::cout << total << " " << global_registry().get("x") << " " << parse_sum("1,2,3") << "\\n"; }\n',
    'src/shapes.cpp': '#include "shapes.hpp"\nnamespace { struct Circle : Shape { double r; explicit Circle(double r) : r(r) {} double area() const override { return 3.14159 * r * r; } std::string name() const override { return "circle"; } }; struct Square : Shape { double s; explicit Square(double s) : s(s) {} double area() const override { return s * s; } std::string name() const override { return "square"; } }; }\nstd::vector<std::unique_ptr<Shape>> make_shapes() { std::vector<std::unique_ptr<Shape>> v; v.push_back(std::make_unique<Circle>(1.0)); v.push_back(std::make_unique<Square>(2.0)); return v; }\n',
    'src/registry.cpp': '#include "registry.hpp"\nRegistry<int> &global_registry() { static Registry<int> r; return r; }\n',
    'src/parser.cpp': '#include <sstream>\n#include <string>\nint parse_sum(const std::string &s) { std::stringstream ss(s); std::string tok; int sum = 0; while (std::getline(ss, tok, \',\')) sum += std::stoi(tok); return sum; }\n',
    'CMakeLists.txt': 'cmake_minimum_required(VERSION 3.16)\nproject(cxxdemo CXX)\nset(CMAKE_CXX_STANDARD 17)\nadd_executable(app ' + CXX_UNITS.map((u) => `src/${u}.cpp`).join(' ') + ')\ntarget_include_directories(app PRIVATE include)\ntarget_compile_options(app PRIVATE -Wall)\n'
  }
  writeTree(root, files)
}
