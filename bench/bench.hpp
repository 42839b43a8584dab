// Shared plumbing of the tqkv-bench subcommands: argument parsing, JSON lines, tables, timing.
#pragma once
#include <chrono>
#include <ctime>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "tqkv/threads.hpp"

namespace bench {

// --name value / --flag arguments after the subcommand.
class Args {
public:
    Args(int argc, char** argv, int first);
    std::string get(const std::string& name, const std::string& fallback) const;
    int get_int(const std::string& name, int fallback) const;
    double get_double(const std::string& name, double fallback) const;
    bool flag(const std::string& name) const { return values_.count(name) > 0; }
    // A comma-separated list ("1,2,3,4").
    std::vector<std::string> list(const std::string& name, const std::string& fallback) const;
    // Throws if an option was given that the command does not know.
    void allow(const std::vector<std::string>& known) const;

private:
    std::map<std::string, std::string> values_;
};

// One flat JSON object, fields in insertion order.
class Json {
public:
    Json& add(const std::string& key, const std::string& value);
    Json& add(const std::string& key, const char* value) { return add(key, std::string(value)); }
    Json& add(const std::string& key, double value);
    Json& add(const std::string& key, int value) { return add(key, double(value)); }
    Json& add(const std::string& key, long value) { return add(key, double(value)); }
    Json& add(const std::string& key, size_t value) { return add(key, double(value)); }
    Json& add(const std::string& key, bool value);
    // A value that is JSON already (an object or array), inserted as it is.
    Json& raw(const std::string& key, const std::string& json);
    std::string str() const { return "{" + body_ + "}"; }

private:
    void key(const std::string& k);
    std::string body_;
};

std::string json_escape(const std::string& s);

// Seconds of a steady clock.
inline double now() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Seconds of CPU time of this process (all its threads). On a shared machine the wall time of a
// single-threaded loop includes the time other processes had the core; its CPU time does not.
inline double cpu_now() {
    timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

// A fixed-width text table printed to stdout.
class Table {
public:
    explicit Table(std::vector<std::string> header) : header_(std::move(header)) {}
    void row(std::vector<std::string> cells) { rows_.push_back(std::move(cells)); }
    void print(FILE* out = stdout) const;

private:
    std::vector<std::string> header_;
    std::vector<std::vector<std::string>> rows_;
};

std::string fmt(const char* format, double v);
// fn(0), ..., fn(n - 1), each once, on `threads` threads (the calling one included): the library's pool.
using tqkv::parallel_for;
// The whole file; throws std::invalid_argument naming the path when it cannot be opened.
std::vector<uint8_t> read_file(const std::string& path);

}  // namespace bench
