# The examples are real programs: each one that exists is built and run as a
# test, and its exit status says whether it reached what it claims.
set(TG_EXAMPLE_TESTS xor custom_op perceptron adaline overfit)
foreach(ex ${TG_EXAMPLE_TESTS})
  if(TARGET ${ex})
    add_test(NAME example_${ex} COMMAND ${ex})
    set_tests_properties(example_${ex} PROPERTIES TIMEOUT 300)
  endif()
endforeach()
if(TARGET softmax_classifier)
  # the spiral fallback keeps this quick under sanitizers
  add_test(NAME example_softmax_classifier COMMAND softmax_classifier --spiral --out ${CMAKE_BINARY_DIR}/loss_curve_test.csv)
  set_tests_properties(example_softmax_classifier PROPERTIES TIMEOUT 300)
endif()
