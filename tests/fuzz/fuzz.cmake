# SPDX-License-Identifier: MIT
# tests/fuzz/fuzz.cmake: the libFuzzer targets and the ThreadSanitizer test.
# Included by CMakeLists.txt. See docs/reliability.md.
if(TG_FUZZ)
  set(TG_FUZZ_TARGETS checkpoint idx csv api npy resume)
  foreach(t ${TG_FUZZ_TARGETS})
    add_executable(fuzz_${t} ${PROJECT_SOURCE_DIR}/tests/fuzz/fuzz_${t}.c)
    target_link_libraries(fuzz_${t} PRIVATE tapegrad_static)
    target_compile_options(fuzz_${t} PRIVATE -fsanitize=fuzzer)
    target_link_options(fuzz_${t} PRIVATE -fsanitize=fuzzer)
    target_compile_definitions(fuzz_${t} PRIVATE _POSIX_C_SOURCE=200809L)
    set_target_properties(fuzz_${t} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/fuzz)
    # a bounded run from the committed seeds (read only: new inputs go to a
    # scratch corpus in the build tree), with the target's dictionary
    set(dict ${PROJECT_SOURCE_DIR}/tests/fuzz/${t}.dict)
    set(work ${CMAKE_BINARY_DIR}/fuzz/corpus_${t})
    add_test(NAME fuzz_${t}
             COMMAND ${CMAKE_COMMAND} -E env ASAN_OPTIONS=detect_leaks=1
                     $<TARGET_FILE:fuzz_${t}> -max_total_time=${TG_FUZZ_SECONDS} -timeout=10
                     -rss_limit_mb=2048 -max_len=4096 -dict=${dict} -print_final_stats=1
                     ${work} ${PROJECT_SOURCE_DIR}/tests/fuzz/corpus/${t})
    set_tests_properties(fuzz_${t} PROPERTIES LABELS fuzz TIMEOUT 300)
    file(MAKE_DIRECTORY ${work})
  endforeach()
endif()
if(TG_TSAN)
  add_executable(tsan_two_contexts ${PROJECT_SOURCE_DIR}/tests/fuzz/tsan_two_contexts.c)
  target_link_libraries(tsan_two_contexts PRIVATE tapegrad_static)
  target_compile_definitions(tsan_two_contexts PRIVATE _POSIX_C_SOURCE=200809L
                             TG_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
  find_package(Threads REQUIRED)
  target_link_libraries(tsan_two_contexts PRIVATE Threads::Threads)
  set_target_properties(tsan_two_contexts PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)
  add_test(NAME tsan_two_contexts COMMAND tsan_two_contexts)
  set_tests_properties(tsan_two_contexts PROPERTIES TIMEOUT 300
                       ENVIRONMENT "TSAN_OPTIONS=halt_on_error=1 second_deadlock_stack=1")
  # the pool and the threaded GEMM's shared packing (internal headers)
  add_executable(tsan_pool_gemm ${PROJECT_SOURCE_DIR}/tests/fuzz/tsan_pool_gemm.c)
  target_link_libraries(tsan_pool_gemm PRIVATE tapegrad_static Threads::Threads)
  target_include_directories(tsan_pool_gemm PRIVATE ${TG_INTERNAL_INCLUDES})
  set_target_properties(tsan_pool_gemm PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)
  add_test(NAME tsan_pool_gemm COMMAND tsan_pool_gemm)
  set_tests_properties(tsan_pool_gemm PROPERTIES TIMEOUT 300
                       ENVIRONMENT "TSAN_OPTIONS=halt_on_error=1 second_deadlock_stack=1")
endif()
