# SPDX-License-Identifier: MIT
# The examples are real programs: each one that exists is built and run as a
# test, and its exit status says whether it reached what it claims (xor: 4/4;
# perceptron: AND and OR converge, XOR does not; adaline: the learned weights
# match least squares; overfit: train loss well below test loss;
# softmax_classifier: the MLP beats chance by far). The test modes are small
# enough for the sanitizer build (Debug, ASan + UBSan at -O0).
set(TG_EXAMPLE_TESTS xor custom_op perceptron adaline)
foreach(ex ${TG_EXAMPLE_TESTS})
  if(TARGET ${ex})
    add_test(NAME example_${ex} COMMAND ${ex})
    set_tests_properties(example_${ex} PROPERTIES TIMEOUT 300)
  endif()
endforeach()
if(TARGET overfit)
  # a 1-64-64-1 network and no weight-decay run (the default is 1-256-256-1)
  add_test(NAME example_overfit COMMAND overfit --quick)
  set_tests_properties(example_overfit PROPERTIES TIMEOUT 300)
endif()
if(TARGET softmax_classifier)
  # the spiral keeps this quick under sanitizers (Fashion-MNIST: script/demo)
  add_test(NAME example_softmax_classifier
           COMMAND softmax_classifier --spiral --out ${CMAKE_BINARY_DIR}/loss_curve_test.csv)
  set_tests_properties(example_softmax_classifier PROPERTIES TIMEOUT 300)
endif()
if(TARGET tg-mlp)
  # train -> eval -> predict on a generated CSV and the tiny IDX fixtures,
  # the --json line, and bad arguments and inputs (non-zero exit, a message)
  find_program(TG_BASH bash)
  if(TG_BASH)
    add_test(NAME example_tg_mlp_cli
             COMMAND ${TG_BASH} ${PROJECT_SOURCE_DIR}/tests/cli_test.sh $<TARGET_FILE:tg-mlp>
                     ${PROJECT_SOURCE_DIR} ${CMAKE_BINARY_DIR}/cli_test)
    set_tests_properties(example_tg_mlp_cli PROPERTIES TIMEOUT 300
                         FAIL_REGULAR_EXPRESSION "FAIL ")
  endif()
  # a tg-mlp checkpoint is a PyTorch state_dict, both ways (Debian's python3-torch;
  # skipped, and said so, without it)
  if(EXISTS /usr/bin/python3)
    add_test(NAME interop_torch COMMAND /usr/bin/python3 ${PROJECT_SOURCE_DIR}/tests/interop_torch.py
             $<TARGET_FILE:tg-mlp> ${CMAKE_BINARY_DIR}/interop_torch)
    set_tests_properties(interop_torch PROPERTIES TIMEOUT 300 SKIP_RETURN_CODE 77)
  endif()
  add_test(NAME example_tg_mlp_help COMMAND tg-mlp --help)
  set_tests_properties(example_tg_mlp_help PROPERTIES PASS_REGULAR_EXPRESSION "usage:")
endif()
if(TARGET char_gpt)
  # a 2-block transformer on docs/guide.md for a few steps; char_gpt exits 0
  # only when the held-out loss fell and a warm step did not grow the arena
  add_test(NAME example_char_gpt
           COMMAND char_gpt --text ${PROJECT_SOURCE_DIR}/docs/guide.md --steps 60 --layers 2
                   --heads 2 --width 32 --context 16 --batch 8 --ff 64 --lr 3e-3 --log-every 20
                   --sample 40 --json)
  set_tests_properties(example_char_gpt PROPERTIES TIMEOUT 300)
endif()
if(TARGET cnn_classifier)
  # made-up 28x28 images of 10 classes (a bright square at one of ten places):
  # quick under the sanitizers; exit 0 only when the test accuracy reaches 0.5
  # and no training step after the first grew the arena
  add_test(NAME example_cnn_classifier
           COMMAND cnn_classifier --synthetic 320 --epochs 2 --json --min-accuracy 0.5)
  set_tests_properties(example_cnn_classifier PROPERTIES TIMEOUT 300)
  # a slice of Fashion-MNIST when it is installed (dataset-fashion-mnist): ten
  # batches reach about 0.47 (chance: 0.10)
  if(EXISTS /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz)
    add_test(NAME example_cnn_classifier_fashion
             COMMAND cnn_classifier --limit 640 --test-limit 500 --epochs 1 --json
                     --min-accuracy 0.3)
    set_tests_properties(example_cnn_classifier_fashion PROPERTIES TIMEOUT 300)
  endif()
endif()
if(TARGET tape_graph)
  # tg_summary's table and tg_tape_dot's graph, rendered by Graphviz when installed
  add_test(NAME example_tape_graph COMMAND tape_graph ${CMAKE_BINARY_DIR}/tape_graph)
  set_tests_properties(example_tape_graph PROPERTIES TIMEOUT 300)
endif()
if(TARGET char_rnn)
  # a 2-layer LSTM of 32 on Genesis 1-2 (tests/data/genesis.txt, 7 KB): exit 0 when
  # the training loss falls and warm steps allocate nothing; --json and --sample run
  add_test(NAME example_char_rnn
           COMMAND char_rnn --text ${PROJECT_SOURCE_DIR}/tests/data/genesis.txt --hidden 32
                   --layers 2 --seq 16 --batch 8 --steps 150 --sample 50 --json)
  set_tests_properties(example_char_rnn PROPERTIES TIMEOUT 300
                       FAIL_REGULAR_EXPRESSION "UNEXPECTED")
endif()
