// The tqkv-bench subcommands, one cmd_*.cpp each; main.cpp dispatches to them by name.
#pragma once
#include "bench.hpp"

namespace bench {

int cmd_quality(const Args& args);
int cmd_encode(const Args& args);
int cmd_attend(const Args& args);
int cmd_report(const Args& args);
int cmd_ppl(const Args& args);
int cmd_decode(const Args& args);
int cmd_budget(const Args& args);
int cmd_logits(const Args& args);
int cmd_tokenize(const Args& args);

}  // namespace bench
